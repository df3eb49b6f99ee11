"""The multi-stage RLHF loop over a run directory (the stages and their registry: stages/)."""
from .config import PipelineConfig, config_from_dict, config_to_dict
from .presets import PRESETS, get_preset, resolve
from .report import build_report, write_report
from .run import Run
from .stages import STAGE_NAMES, STAGES, Stage, run_pipeline

__all__ = ["PRESETS", "PipelineConfig", "Run", "STAGES", "STAGE_NAMES", "Stage", "build_report", "config_from_dict",
           "config_to_dict", "get_preset", "resolve", "run_pipeline", "write_report"]

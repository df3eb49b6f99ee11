"""The multi-stage RLHF loop over a run directory (see stages.py for the order)."""
from .config import PipelineConfig, config_from_dict, config_to_dict
from .presets import PRESETS, get_preset, resolve
from .report import build_report, write_report
from .run import STAGES, Run
from .stages import run_pipeline

__all__ = ["PRESETS", "PipelineConfig", "Run", "STAGES", "build_report", "config_from_dict", "config_to_dict",
           "get_preset", "resolve", "run_pipeline", "write_report"]

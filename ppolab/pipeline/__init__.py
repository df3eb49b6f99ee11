"""The multi-stage RLHF loop over a run directory (see stages.py for the order)."""
from .presets import PRESETS, get_preset
from .report import build_report, write_report
from .run import STAGES, Run
from .stages import run_pipeline

__all__ = ["PRESETS", "Run", "STAGES", "build_report", "get_preset", "run_pipeline", "write_report"]

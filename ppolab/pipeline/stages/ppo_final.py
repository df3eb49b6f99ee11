"""PPO, final: from the cold-start policy against the human-feedback reward model."""
from __future__ import annotations

from ..config import PipelineConfig
from ..run import Run
from .ppo import run_ppo


def run(run: Run, cfg: PipelineConfig) -> dict:
    return run_ppo(run, cfg, "ppo_final", run / "ppo_model_coldstart", run / "reward_model_human",
                   run / "ppo_model_final", cfg.ppo_final)

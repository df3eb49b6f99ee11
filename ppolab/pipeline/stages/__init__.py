"""The stages of the RLHF loop for translation, each reading and writing one run directory, and
the one registry the CLI, the seeds, the report and the run directory read.

base -> SFT -> synthetic preferences -> reward model (cold start) -> PPO (cold start)
    -> human feedback -> reward model on human preferences -> PPO (final)
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...io import remove_stale_temporaries
from ..config import PipelineConfig, config_from_dict
from ..run import Run
from . import base, feedback, ppo, ppo_final, reward_model, reward_model_human, sft, synth


@dataclass(frozen=True)
class Stage:
    """One stage: `run(run, cfg) -> result` (kept in stages.json). `seed_index`: the stage's fixed
    seed offset (so adding a stage never changes another stage's random stream); `cli_name`: its
    `ppolab` command, if any; `eval_row`: whether the report's model table has a row for it."""

    name: str
    seed_index: int
    run: Callable[[Run, PipelineConfig], dict]
    cli_name: str | None = None
    eval_row: bool = False


# In run order.
STAGES: tuple[Stage, ...] = (
    Stage("base", 7, base.run, eval_row=True),
    Stage("sft", 0, sft.run, cli_name="sft", eval_row=True),
    Stage("synth", 1, synth.run, cli_name="synth"),
    Stage("reward_model", 2, reward_model.run, cli_name="train-rm"),
    Stage("ppo_coldstart", 3, ppo.run, cli_name="ppo", eval_row=True),
    Stage("feedback", 4, feedback.run),
    Stage("reward_model_human", 5, reward_model_human.run),
    Stage("ppo_final", 6, ppo_final.run, cli_name="ppo --final", eval_row=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def run_pipeline(run: Run, cfg: PipelineConfig | dict, only: list[str] | None = None) -> dict:
    """Run every stage not yet completed, in order; return all stage results."""
    # every setting, before any stage writes anything (a dict is read by the strict loader)
    cfg = cfg.validate() if isinstance(cfg, PipelineConfig) else config_from_dict(cfg)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("this preset needs a CUDA GPU (device=cuda) and none is visible; "
                           "use --preset cpu-test or fast on a CPU")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    for s in STAGES:
        if only and s.name not in only:
            continue
        if run.done(s.name):
            print(f"[{s.name}] already complete in {run.path}; skipping")
            continue
        print(f"[{s.name}] running ...", flush=True)
        for stale in remove_stale_temporaries(run.path):
            print(f"[{s.name}] removed {stale}, left by an interrupted write", flush=True)
        # Each stage starts from its own seed, so a stage gives the same result whether the stages
        # before it ran in this process or in an earlier one (a resumed run equals a fresh one).
        torch.manual_seed(cfg.seed * 1_000 + s.seed_index)
        t0 = time.time()
        result = s.run(run, cfg)
        result["seconds"] = round(time.time() - t0, 1)
        run.complete(s.name, result)
        print(f"[{s.name}] done in {result['seconds']:.0f} s", flush=True)
    return run.stages

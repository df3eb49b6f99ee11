"""Real people in the loop, over a run directory: the run's current models make the candidates an
annotator ranks, and `retrain` turns every judgement so far into a new round.

Round 1 writes `reward_model_human/` and `ppo_model_final/` (the pipeline's own final stages);
round n > 1 writes `reward_model_human_n/` and `ppo_model_final_n/`. Each round's reward model
continues from the cold-start one on all judgements (rankings, better translations, 1-5 ratings);
its PPO stage starts from the newest policy and is KL-anchored to it. Stages complete in
stages.json and PPO checkpoints every step, so a killed `retrain` resumes where it stopped.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from ..errors import UserError
from .run import Run

__all__ = ["RunCandidates", "current_models", "human_round", "retrain", "round_names"]

HOW_TO = ("human feedback: open the annotation page with `ppolab feedback serve --run {run}` "
          "(or annotate in the terminal with `ppolab feedback annotate --run {run}`), "
          "then continue with `ppolab retrain --run {run}`")


def round_names(n: int) -> dict[str, str]:
    """Stage and folder names of human round n."""
    suffix = "" if n == 1 else f"_{n}"
    return {"rm_stage": f"reward_model_human{suffix}", "rm_dir": f"reward_model_human{suffix}",
            "ppo_stage": f"ppo_final{suffix}", "ppo_dir": f"ppo_model_final{suffix}"}


def _rounds_done(stages: dict) -> int:
    return max([1 if k == "ppo_final" else int(m.group(1)) for k in stages
                for m in [re.fullmatch(r"ppo_final(?:_(\d+))?", k)] if m] or [0])


class _RunView:
    """A run directory read without touching it (Run() rewrites run.json)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def stages(self) -> dict:
        import json

        p = self.path / "stages.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def current_models(run: Run | Path) -> dict:
    """The newest policy and reward model of a run: `{"policy", "reward", "policy_name"}` (folders)."""
    run = run if isinstance(run, (Run, _RunView)) else _RunView(run)
    stages = run.stages
    n = _rounds_done(stages)
    if n:
        names = round_names(n)
        policy, reward = names["ppo_dir"], names["rm_dir"]
    elif "ppo_coldstart" in stages:
        policy, reward = "ppo_model_coldstart", "reward_model_coldstart"
    else:
        raise UserError(f"{run.path}: no cold-start policy yet; run `ppolab demo --out {run.path}` (it stops "
                        "after the cold start with feedback.annotator=human) before annotating")
    return {"policy": run / policy, "reward": run / reward, "policy_name": policy}


class RunCandidates:
    """A `CandidateSource` from a run's newest models: `feedback.candidates` samples of the policy,
    deduplicated, ranked by the reward model (best first, with its scores). Loaded on first use."""

    def __init__(self, run: Run | Path, cfg: dict):
        self.cfg = cfg
        self.models = current_models(run)
        self.model_version = self.models["policy_name"]
        self._loaded = None

    def _load(self):
        from .stages import _load_policy, _load_reward, _model_config

        if self._loaded is None:
            policy, tok = _load_policy(self.models["policy"], self.cfg)
            reward = _load_reward(self.models["reward"], _model_config(self.cfg)).eval()
            self._loaded = policy.eval(), tok, reward
        return self._loaded

    def __call__(self, source: str, direction: str):
        from ..data import TranslationExample
        from ..feedback import Candidate
        from .stages import _candidates

        policy, tok, reward = self._load()
        src, _, tgt = direction.partition("->")
        ex = TranslationExample(source, "", src, tgt, "typed", "typed")
        with torch.no_grad():
            ranked = _candidates(policy, tok, reward, [ex], self.cfg["feedback"]["candidates"],
                                 self.cfg["ppo"]["max_new_tokens"])
        return [Candidate(t, float(s)) for t, s in (ranked[0][1] if ranked else [])]


def _judgements(run: Run) -> int:
    """Judgements so far: the store's (rankings, each with its better translation if any) and the
    rating pairs of `feedback import`."""
    from ..feedback import FeedbackStore

    store = run / "feedback.sqlite"
    n = FeedbackStore(store).stats()["feedback"] if store.exists() else 0
    ratings = run / "rating_preferences.jsonl"
    if ratings.exists():
        n += sum(1 for line in ratings.read_text(encoding="utf-8").splitlines() if line.strip())
    return n


def human_round(run: Run) -> int:
    """The round `retrain` works on: the first whose PPO stage is not complete."""
    return _rounds_done(run.stages) + 1


def retrain(run: Run, cfg: dict) -> dict:
    """One human round: judgements -> pairs -> human reward model -> final PPO from the newest policy."""
    from ..feedback import FeedbackStore
    from .stages import STAGE_SEED_INDEX, stage_ppo, stage_reward_model_human

    if "ppo_coldstart" not in run.stages:
        raise UserError(f"{run.path}: the cold start is not complete; run `ppolab demo --out {run.path}` first")
    n = human_round(run)
    names = round_names(n)
    start = current_models(run)
    judgements = _judgements(run)
    if not run.done(names["rm_stage"]):
        # Judgements the previous round trained on (the pipeline's own round 1: its feedback stage's count).
        previous = run.stages.get(round_names(n - 1)["rm_stage"], {}) if n > 1 else {}
        before = previous.get("judgements", run.stages.get("feedback", {}).get("feedback", 0)) if n > 1 else 0
        if judgements == 0:
            raise UserError(f"{run.path}: no judgements yet; " + HOW_TO.format(run=run.path).split(", then")[0])
        if judgements <= before:
            raise UserError(f"{run.path}: no new judgements since round {n - 1} ({judgements} in all); annotate "
                            f"more (`ppolab feedback serve --run {run.path}`), then retrain")
        if (run / "feedback.sqlite").exists():
            FeedbackStore(run / "feedback.sqlite").export_jsonl(run.path)
    ppo_final = cfg["ppo_final"]
    steps = {
        names["rm_stage"]: lambda: stage_reward_model_human(run, cfg, names["rm_stage"], run / names["rm_dir"]),
        names["ppo_stage"]: lambda: stage_ppo(
            run, cfg, names["ppo_stage"], start["policy"], run / names["rm_dir"], run / names["ppo_dir"],
            ppo_final["steps"], cfg["ppo"]["lr"] * ppo_final["lr_factor"],
            {k: v for k, v in ppo_final.items() if k not in ("steps", "lr_factor")}),
    }
    results = {}
    for k, (name, fn) in enumerate(steps.items()):
        if run.done(name):
            print(f"[{name}] already complete in {run.path}; skipping")
            results[name] = run.stages[name]
            continue
        print(f"[{name}] running (human round {n}) ...", flush=True)
        # Round n's stages draw their own seeds: round 1 the pipeline's, later rounds offset by n.
        base = STAGE_SEED_INDEX["reward_model_human" if k == 0 else "ppo_final"]
        torch.manual_seed(cfg["seed"] * 1_000 + base + 100 * (n - 1))
        t0 = time.time()
        result = fn()
        result.update(seconds=round(time.time() - t0, 1), round=n, judgements=judgements,
                      policy_start=start["policy_name"])
        run.complete(name, result)
        results[name] = result
        print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)
    return {"round": n, **results}


def run_config(path: Path, preset: str, overrides: list[str]) -> dict:
    """A run's own settings (run.json) over the preset's, then `--set` overrides, validated."""
    import json

    from .presets import get_preset, merge, parse_override
    from .validate import validate_settings

    cfg = get_preset(preset)
    run_json = Path(path) / "run.json"
    if run_json.exists():
        saved = json.loads(run_json.read_text(encoding="utf-8")).get("config", {})
        for section, value in saved.items():  # lenient: a run made by another version may lack a section
            if isinstance(value, dict) and isinstance(cfg.get(section), dict):
                cfg[section].update(value)
            else:
                cfg[section] = value
    for item in overrides:
        cfg = merge(cfg, parse_override(item))
    return validate_settings(cfg)

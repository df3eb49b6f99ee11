"""PPO, cold start: from the SFT model against the cold-start reward model.

`run_ppo` is the whole stage; ppo_final.py runs it on its own section.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import random
import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...data import build_prompt, stops_at_newline
from ...errors import UserError
from ...inspect import RolloutRecorder
from ...io import atomic_open
from ...models import Reference, RewardModel, build_value_model, wrap_lora
from ...ppo import PPOTrainer
from ...reward.reference import MixedReward, ReferenceChrF
from ...sft import save_sft
from ..config import REWARDS, PipelineConfig, PPOStage
from ..data import load_split
from ..evaluate import evaluate, flores_block
from ..models import load_policy, load_reward, policy_samples, sft_dir
from ..run import Run


def ppo_prompts(cfg: PipelineConfig, tok) -> list[str]:
    return [build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tok) for ex in load_split(cfg, "train")]


def ppo_reward(run: Run, cfg: PipelineConfig, stage: str, p: PPOStage, rm: RewardModel, policy, tok):
    """What PPO maximises (`ppo.reward`): "model", the reward model's normalised score; "chrf", the
    sentence chrF of the response against the training pair's reference; "model+chrf", their sum
    with `ppo.chrf_weight` on chrF and the rest on the model. chrF is normalised like the reward
    model (mean 0, std 1 on samples of the stage's starting policy), so the weight is a share of
    two unit-scale signals; the fitted constants are kept in the run directory, so a resumed stage
    scores exactly as before."""
    kind = p.reward
    if kind not in REWARDS:
        raise UserError(f"setting ppo.reward = {kind!r}: expected one of {REWARDS}")
    if kind == "model":
        return rm
    refs = dict(zip(ppo_prompts(cfg, tok), (ex.target for ex in load_split(cfg, "train"))))  # the prompts PPO passes
    norm_file = run / f"{stage}_chrf_norm.json"
    if norm_file.exists():
        norm = json.loads(norm_file.read_text())
        chrf_reward = ReferenceChrF(refs, norm["center"], norm["scale"])
    else:
        chrf_reward = ReferenceChrF(refs).fit(*policy_samples(policy, tok, cfg, cfg.reward_model.normalize_samples))
        with atomic_open(norm_file, "w") as f:
            json.dump({"center": chrf_reward.center, "scale": chrf_reward.scale}, f)
    if kind == "chrf":
        return MixedReward({"chrf": (chrf_reward, 1.0)})
    w = p.chrf_weight
    return MixedReward({"model": (rm.score, 1.0 - w), "chrf": (chrf_reward, w)})


def save_checkpoint(path: Path, trainer, step: int, record: dict) -> None:
    """Everything a resumed stage needs, as tensors and plain data only (loadable with weights_only):
    the models' weights and the trainer's own state (optimizers, KL controller, steps, RNG)."""
    critic = trainer.value is not None  # critic-free estimators (GRPO, RLOO, ...) train no value model
    state = {"policy": trainer.policy.state_dict(), "value": trainer.value.state_dict() if critic else None,
             "trainer": trainer.state_dict(), "step": step, "record": record}
    with atomic_open(path, "wb", encoding=None) as f:
        torch.save(state, f)


def load_checkpoint(path: Path, trainer) -> tuple[int, dict | None]:
    """Restore the trainer from `path`; return the number of steps done and the last step's row.

    `weights_only=True`: a run directory may be shared or copied, and unpickling arbitrary objects
    would run any code a crafted file holds. Anything beyond tensors and plain data is refused.
    """
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:  # an object that is not a tensor or plain data
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it holds {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise UserError(f"{path}: not a loadable ppolab checkpoint: {what}, and loading it could run code; "
                        "delete it to restart the stage") from None
    except Exception as e:  # truncated, or not a torch file at all
        raise UserError(f"{path}: not a loadable ppolab checkpoint: unreadable ({type(e).__name__}); "
                        "delete it to restart the stage") from None
    if (trainer.value is None) != (state["value"] is None) or "trainer" not in state:
        saved = "with" if state.get("value") is not None else "without"
        raise UserError(f"{path}: saved {saved} a value model or by an older version, but this stage differs; "
                        "delete it to restart the stage")
    trainer.policy.load_state_dict(state["policy"])
    if trainer.value is not None:
        trainer.value.load_state_dict(state["value"])
    trainer.load_state_dict(state["trainer"])
    return state["step"], state.get("record")


def run_ppo(run: Run, cfg: PipelineConfig, stage: str, policy_dir: Path, reward_dir: Path, out: Path,
            p: PPOStage) -> dict:
    """PPO from `policy_dir` against the reward model in `reward_dir`, KL-anchored to `policy_dir`,
    with the settings of section `p` (`cfg.ppo` or `cfg.ppo_final`).

    Resumable: every step's state (weights, optimizers, KL controller, RNG) is checkpointed
    atomically, and a restarted stage continues from the last completed step.
    """
    steps = p.steps
    policy, tok = load_policy(policy_dir, cfg)
    mcfg = cfg.model
    if mcfg.lora:
        policy = wrap_lora(policy, mcfg)
    # The reference is the policy this stage starts from: the SFT model for the cold start, the
    # cold-start policy for the final stage (iterated RLHF, as in Llama 2). With LoRA it is the
    # same weights with the adapter off; otherwise a frozen copy.
    ref = Reference(policy)
    reward = load_reward(reward_dir, mcfg).eval()
    reward.tokenizer = tok  # saved from the same tokenizer
    pcfg = p.trainer_config()
    # Critic-free estimators (GRPO, RLOO, REINFORCE++) run with no value model at all.
    value = None if pcfg.critic_free else build_value_model(policy, reward, mcfg.value_init, mcfg.value_head_hidden)
    # Few-shot prompts put one answer per line: their responses end at a newline whatever the setting.
    gcfg = dataclasses.replace(cfg.generation, stop_at_newline=cfg.generation.stop_at_newline or stops_at_newline(tok))
    # A few rollouts per step, token by token, for `ppolab inspect` (RUN/rollouts.jsonl; 0 = off).
    # A resumed stage redoes the steps after its checkpoint; the recorder drops their old lines.
    recorder = RolloutRecorder(run / "rollouts.jsonl", per_step=p.record_rollouts, stage=stage)
    objective = ppo_reward(run, cfg, stage, p, reward, policy, tok)
    trainer = PPOTrainer(pcfg, policy, ref, value, objective, tok, gcfg, recorder=recorder)
    prompts = ppo_prompts(cfg, tok)

    ckpt = run / f".{stage}.checkpoint.pt"
    start = 0
    if ckpt.exists():
        start, record = load_checkpoint(ckpt, trainer)
        print(f"{stage}: resuming at step {start} from {ckpt}")
        if record is not None and start not in {r["step"] for r in run.step_rows(stage)}:
            run.log(stage, record)  # killed after the checkpoint, before its metrics row

    t0 = time.time()
    for step in tqdm(range(start, steps), desc=stage, initial=start, total=steps):
        # group_size samples of each prompt: batch_size / group_size distinct prompts per step
        batch = random.Random(cfg.seed * 100_003 + step).sample(prompts, pcfg.batch_size // pcfg.group_size)
        stats = trainer.ppo_step(batch)
        record = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        record["timings"] = stats["timings"]
        record["sample"] = stats["generated_texts"][0]
        for name, part in getattr(objective, "last_parts", {}).items():
            record[f"reward_{name}"] = float(part.mean())  # weighted share of score_mean
        # Checkpoint first (it carries this step's row), metrics row second: a kill between the two
        # neither re-runs the step nor loses its row; the resumed stage logs it from the checkpoint.
        save_checkpoint(ckpt, trainer, step + 1, record)
        run.log(stage, record)
    policy = trainer.policy.merge_and_unload() if hasattr(trainer.policy, "merge_and_unload") else trainer.policy
    save_sft(policy, tok, out)
    ev = evaluate(policy, tok, cfg)
    rows = [r for r in run.step_rows(stage) if "score_mean" in r][-steps:]
    k = max(1, len(rows) // 10)
    mean = lambda key, part: float(sum(r[key] for r in part) / len(part))  # noqa: E731
    result = {
        "reward_start": mean("score_mean", rows[:k]), "reward_end": mean("score_mean", rows[-k:]),
        "kl_per_token_end": mean("kl_per_token", rows[-k:]), "kl_per_sequence_end": mean("kl", rows[-k:]),
        "chrf_test": ev["chrf"], "bleu_test": ev["bleu"], "steps": steps, "seconds": time.time() - t0,
        "eval": flores_block(policy, tok, cfg, ev),
    }
    run.log(stage, {"event": "done", **result})
    ckpt.unlink(missing_ok=True)
    return result


def run(run: Run, cfg: PipelineConfig) -> dict:
    """The cold start: from the SFT model against the cold-start reward model."""
    return run_ppo(run, cfg, "ppo_coldstart", sft_dir(run), run / "reward_model_coldstart",
                   run / "ppo_model_coldstart", cfg.ppo)

"""The stages of the RLHF loop for translation, each reading and writing one run directory.

SFT -> synthetic preferences -> reward model (cold start) -> PPO (cold start)
    -> human feedback -> reward model on human preferences -> PPO (final)
"""
from __future__ import annotations

import json
import pickle
import random
import re
import threading
import time
import urllib.request
import uuid
import zlib
from pathlib import Path

import torch

from ..config import GenerationConfig, ModelConfig, PPOConfig
from ..data import build_prompt, load_shipped_corpus
from ..errors import UserError
from ..io import atomic_open, remove_stale_temporaries
from ..metrics import sentence_chrf
from ..model_files import check_model_folder, check_reward_folder
from ..models import Reference, RewardModel, build_tiny_causal_lm, build_tokenizer, build_value_model, load_causal_lm
from ..sft.translate import TARGET_SEPARATOR, evaluate_translation, translate
from .run import Run
from .validate import validate_settings

LANGS = {"eng->arb": ("eng", "arb"), "fra->arb": ("fra", "arb")}


def as_response(text: str) -> str:
    """The response text as the policy generates it after a prompt (see ppolab.sft.translate)."""
    return TARGET_SEPARATOR + text.strip()


def _sub(cfg: dict, key: str, allowed) -> dict:
    return {k: v for k, v in cfg[key].items() if k in allowed}


def _fields(cls) -> set:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def _split(cfg: dict, name: str):
    return list(load_shipped_corpus(name))


def _bucket(key: str, fraction: float) -> bool:
    """A stable pseudo-random split by key: the same source always lands on the same side."""
    return (zlib.crc32(key.encode("utf-8")) % 10_000) < fraction * 10_000


def _model_config(cfg: dict) -> ModelConfig:
    """The run's model settings (dtype, LoRA, quantisation, checkpointing, value init) for every stage."""
    return ModelConfig(**{k: v for k, v in cfg["model"].items() if k in _fields(ModelConfig)}, seed=cfg["seed"])


def _test_examples(cfg: dict):
    test = _split(cfg, "test")
    limit = cfg["eval"].get("test_limit")
    return test[:limit] if limit else test


def _evaluate(model, tok, cfg, examples=None, label: str = "test") -> dict:
    """Greedy translation of `examples` (default: the test split) with scores and hypotheses."""
    model.eval()
    return evaluate_translation(model, tok, _test_examples(cfg) if examples is None else examples,
                                max_new_tokens=cfg["eval"]["max_new_tokens"],
                                batch_size=cfg["eval"].get("batch_size", 32), return_hypotheses=True,
                                progress=f"evaluate {label}")


def flores_file() -> Path | None:
    """FLORES-200 devtest (EN/FR/AR), read where this workplace keeps it: `$PPOLAB_FLORES`, else
    `shared/data/flores200/` beside the repository or beside any folder above it (a worktree or a
    clone nested deeper). Never shipped with ppolab; None when absent."""
    import os

    env = os.environ.get("PPOLAB_FLORES")
    rel = Path("shared") / "data" / "flores200" / "devtest.eng-fra-arb.tsv"
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(env)] if env else []
    candidates += [folder / rel for folder in (*repo.parents, *Path.cwd().resolve().parents)]
    return next((c for c in candidates if c.is_file()), None)


def _scores(examples, hypotheses) -> dict:
    """chrF, chrF++ and BLEU per direction of already translated `examples`."""
    from ..metrics import bleu, chrf, chrf_pp

    out = {}
    for direction in LANGS:
        idx = [i for i, ex in enumerate(examples) if ex.direction == direction]
        if idx:
            hyps, refs = [hypotheses[i] for i in idx], [examples[i].target for i in idx]
            out[direction] = {"chrf": chrf(hyps, refs), "chrf_pp": chrf_pp(hyps, refs), "bleu": bleu(hyps, refs),
                              "n": len(idx)}
    return out


def _flores_block(model, tok, cfg, test_eval: dict) -> dict | None:
    """Per-direction scores on the test split (from `test_eval`, `_evaluate`'s result, so it is not
    translated twice) and on the first `eval.flores_limit` FLORES devtest sentences of each
    direction; None when the preset sets no limit."""
    limit = cfg["eval"].get("flores_limit")
    if not limit:
        return None
    from ..data import load_parallel

    block = {"test": _scores(_test_examples(cfg), test_eval["hypotheses"])}
    path = flores_file()
    if path is None:
        block["flores"] = None  # the report says it was not available
    else:
        rows = list(load_parallel(path))
        first = [ex for d in LANGS for ex in [r for r in rows if r.direction == d][:limit]]
        block["flores"] = _scores(first, _evaluate(model, tok, cfg, first, "FLORES")["hypotheses"])
        block["flores_file"] = str(path)
    return block


def _set_prompt_format(tok, cfg: dict) -> None:
    """The preset's prompt format, if it names one (saved with every model trained from here)."""
    if cfg.get("prompt", {}).get("format"):
        tok.ppolab_prompt_format = cfg["prompt"]["format"]


# -- the base model, before any training -------------------------------------------------------------
def stage_base(run: Run, cfg: dict) -> dict:
    """Scores of the pretrained model as it comes, in the preset's prompt format (the table's first row)."""
    mcfg = _model_config(cfg)
    if not mcfg.policy_path:
        return {"skipped": "tiny models start random: no base row"}
    model, tok = _load_policy(mcfg.policy_path, cfg)
    _set_prompt_format(tok, cfg)
    t0 = time.time()
    ev = _evaluate(model, tok, cfg)
    result = {"eval": _flores_block(model, tok, cfg, ev), "chrf_test": ev["chrf"], "bleu_test": ev["bleu"],
              "seconds": time.time() - t0}
    run.log("base", result)
    return result


# -- SFT -------------------------------------------------------------------------------------------
def stage_sft(run: Run, cfg: dict) -> dict:
    from ..sft import SFTConfig, train_sft

    train, valid = _split(cfg, "train"), _split(cfg, "valid")
    if cfg["sft"].get("train_limit"):  # a seeded subset (both directions) for slow real models
        random.Random(cfg["seed"]).shuffle(train)
        train = train[: cfg["sft"]["train_limit"]]
    mcfg = _model_config(cfg)
    if mcfg.policy_path:
        from ..models import load_tokenizer, wrap_lora

        from ..models.vocab_trim import apply_vocab_trim

        tok, model = load_tokenizer(mcfg.policy_path), load_causal_lm(mcfg.policy_path, mcfg)
        model = apply_vocab_trim(model, tok, mcfg.vocab_trim)
        _set_prompt_format(tok, cfg)
        if mcfg.lora:  # LoRA SFT; save_sft merges the adapter, so later stages load a plain model
            model = wrap_lora(model, mcfg)
    else:
        texts = [t for ex in train for t in (ex.source, ex.target)]
        tok = build_tokenizer(texts, vocab_size=cfg["tokenizer"]["vocab_size"])
        model = build_tiny_causal_lm(mcfg, tok)
    scfg = SFTConfig(**_sub(cfg, "sft", _fields(SFTConfig)), seed=cfg["seed"])
    t0 = time.time()
    history = train_sft(model, tok, train, valid, scfg, out_dir=run / "sft", log=run.logger("sft"))
    ev = _evaluate(model, tok, cfg)
    result = {"eval": _flores_block(model, tok, cfg, ev),
              "chrf_test": ev["chrf"], "bleu_test": ev["bleu"], "chrf_pp_test": ev["chrf_pp"],
              "valid_chrf": history[-1].get("valid_chrf"), "train_loss": history[-1].get("train_loss"),
              "parameters": sum(p.numel() for p in model.parameters()), "seconds": time.time() - t0}
    run.log("sft", {"event": "test", **result})
    return result


def _load_policy(path: Path, cfg: dict | None = None):
    from ..sft import load_sft

    check_model_folder(path, "policy")
    return load_sft(path, _model_config(cfg) if cfg is not None else None)


def _load_reward(path: Path, mcfg: ModelConfig | None = None) -> RewardModel:
    check_reward_folder(path)  # a missing or half-copied folder: one error naming the file
    return RewardModel.load(path, mcfg)


# -- synthetic preferences -------------------------------------------------------------------------
def stage_synth(run: Run, cfg: dict) -> dict:
    from ..metrics import CombinedMetric
    from ..synthetic import SynthConfig, generate_synthetic_preferences

    model, tok = _load_policy(run / "sft", cfg)
    model.eval()
    examples = _split(cfg, "train")
    random.Random(cfg["seed"]).shuffle(examples)
    n = cfg["synth"].get("n_sources")
    examples = examples[:n] if n else examples
    scfg = SynthConfig(**_sub(cfg, "synth", _fields(SynthConfig)), seed=cfg["seed"])
    stats = generate_synthetic_preferences(model, tok, examples, CombinedMetric(), scfg, out_dir=run.path)
    result = {"pairs": int(stats["pairs"]), "sources": stats.get("sources"), "seconds": stats.get("seconds")}
    run.log("synth", result)
    return result


def _rm_pair(p: dict) -> dict:
    """A preference row as the reward model trains on it: prompt + response exactly as in PPO."""
    out = {"prompt": p["prompt"], "chosen": as_response(p["chosen"]), "rejected": as_response(p["rejected"])}
    if "chosen_score" in p and "rejected_score" in p:
        out["chosen_score"], out["rejected_score"] = p["chosen_score"], p["rejected_score"]
    return out


def reference_pairs(pairs: list[dict]) -> list[dict]:
    """Reference-anchored pairs: each source's reference is preferred over every rejected sample.

    The reference is a human translation, so it scores 1.0 on any reference-based metric.
    """
    out, seen = [], set()
    for p in pairs:
        key = (p["prompt"], p["rejected"])
        if key in seen or p["rejected"].strip() == p["reference"].strip():
            continue
        seen.add(key)
        out.append(_rm_pair({"prompt": p["prompt"], "chosen": p["reference"], "rejected": p["rejected"],
                             "chosen_score": 1.0, "rejected_score": p.get("rejected_score", 0.0)}))
    return out


def _sft_samples(run: Run, cfg: dict, n: int) -> tuple[list[str], list[str]]:
    """n samples of the SFT policy on training sources (for the reward normalisation)."""
    model, tok = _load_policy(run / "sft", cfg)
    return _policy_samples(model, tok, cfg, n)


def _policy_samples(model, tok, cfg: dict, n: int) -> tuple[list[str], list[str]]:
    """Prompts and sampled responses of `model` on n training sources, half per direction."""
    model.eval()
    examples = _split(cfg, "train")
    random.Random(cfg["seed"] + 1).shuffle(examples)
    prompts, responses = [], []
    for direction, (src, tgt) in LANGS.items():
        chunk = [ex for ex in examples if ex.direction == direction][: n // 2]
        if not chunk:
            continue
        hyps = translate(model, tok, [ex.source for ex in chunk], src, tgt, do_sample=True,
                         max_new_tokens=cfg["ppo"]["max_new_tokens"])
        prompts += [build_prompt(ex.source, src, tgt, tok) for ex in chunk]
        responses += [as_response(h) for h in hyps]
    return prompts, responses


def _train_rm(run: Run, cfg: dict, stage: str, model: RewardModel, train_pairs, val_pairs, rm_cfg: dict, out: Path):
    from ..reward import RewardTrainConfig, normalize_reward_model, train_reward_model

    rcfg = RewardTrainConfig(**{k: v for k, v in rm_cfg.items() if k in _fields(RewardTrainConfig)},
                             seed=cfg["seed"])
    t0 = time.time()
    history = train_reward_model(model, train_pairs, val_pairs, rcfg, log=run.logger(stage))
    prompts, responses = _sft_samples(run, cfg, cfg["reward_model"]["normalize_samples"])
    mean, std = normalize_reward_model(model, prompts, responses)
    model.save(out)
    return {"val_accuracy": history[-1]["val_accuracy"], "train_accuracy": history[-1].get("train_accuracy"),
            "train_pairs": len(train_pairs), "val_pairs": len(val_pairs), "norm_mean": mean, "norm_std": std,
            "history": history, "seconds": time.time() - t0}


def stage_reward_model(run: Run, cfg: dict) -> dict:
    from ..reward import RewardTrainConfig, build_reward_model, evaluate_reward_model
    from ..synthetic import load_preferences

    pairs = load_preferences(run / "synthetic_preferences.jsonl")
    if not pairs:
        raise RuntimeError(f"{run / 'synthetic_preferences.jsonl'}: no pairs; lower synth.min_gap or add sources")
    frac = cfg["reward_model"]["val_fraction"]
    # Split by source sentence so validation pairs come from sources the model never trained on.
    val = [_rm_pair(p) for p in pairs if _bucket(p["source"], frac)]
    train = [_rm_pair(p) for p in pairs if not _bucket(p["source"], frac)]
    val_reference = reference_pairs([p for p in pairs if _bucket(p["source"], frac)])
    if cfg["reward_model"].get("reference_pairs", False):
        train += reference_pairs([p for p in pairs if not _bucket(p["source"], frac)])
    sft, tok = _load_policy(run / "sft", cfg)
    rcfg = RewardTrainConfig(**{k: v for k, v in cfg["reward_model"].items() if k in _fields(RewardTrainConfig)})
    model = build_reward_model(sft, tok, rcfg)
    del sft
    result = _train_rm(run, cfg, "reward_model", model, train, val, cfg["reward_model"],
                       run / "reward_model_coldstart")
    # Does the model rank a human reference above the samples? Synthetic pairs alone never show
    # it one, and without them it learned surface cues (length) that references do not share.
    result["val_reference_accuracy"] = evaluate_reward_model(model, val_reference)["accuracy"]
    run.log("reward_model", {"event": "done", **{k: v for k, v in result.items() if k != "history"}})
    return result


# -- PPO -------------------------------------------------------------------------------------------
def _ppo_prompts(cfg: dict, tok) -> list[str]:
    return [build_prompt(ex.source, ex.src_lang, ex.tgt_lang, tok) for ex in _split(cfg, "train")]


REWARDS = ("model", "model+chrf", "chrf")  # ppo.reward


def _ppo_reward(run: Run, cfg: dict, stage: str, p: dict, rm: RewardModel, policy, tok):
    """What PPO maximises (`ppo.reward`): "model", the reward model's normalised score; "chrf", the
    sentence chrF of the response against the training pair's reference; "model+chrf", their sum
    with `ppo.chrf_weight` on chrF and the rest on the model. chrF is normalised like the reward
    model (mean 0, std 1 on samples of the stage's starting policy), so the weight is a share of
    two unit-scale signals; the fitted constants are kept in the run directory, so a resumed stage
    scores exactly as before."""
    from ..reward.reference import MixedReward, ReferenceChrF

    kind = p.get("reward", "model")
    if kind not in REWARDS:
        raise UserError(f"setting ppo.reward = {kind!r}: expected one of {REWARDS}")
    if kind == "model":
        return rm
    refs = dict(zip(_ppo_prompts(cfg, tok), (ex.target for ex in _split(cfg, "train"))))  # the prompts PPO passes
    norm_file = run / f"{stage}_chrf_norm.json"
    if norm_file.exists():
        norm = json.loads(norm_file.read_text())
        chrf_reward = ReferenceChrF(refs, norm["center"], norm["scale"])
    else:
        chrf_reward = ReferenceChrF(refs).fit(*_policy_samples(policy, tok, cfg, cfg["reward_model"]["normalize_samples"]))
        with atomic_open(norm_file, "w") as f:
            json.dump({"center": chrf_reward.center, "scale": chrf_reward.scale}, f)
    if kind == "chrf":
        return MixedReward({"chrf": (chrf_reward, 1.0)})
    w = p["chrf_weight"]
    return MixedReward({"model": (rm.score, 1.0 - w), "chrf": (chrf_reward, w)})


def _save_checkpoint(path: Path, trainer, step: int, record: dict) -> None:
    """Everything a resumed stage needs, as tensors and plain data only (loadable with weights_only)."""
    critic = trainer.value is not None  # critic-free estimators (GRPO, RLOO, ...) train no value model
    state = {"policy": trainer.policy.state_dict(), "value": trainer.value.state_dict() if critic else None,
             "policy_optimizer": trainer.policy_optimizer.state_dict(),
             "value_optimizer": trainer.value_optimizer.state_dict() if critic else None,
             "kl_controller": dict(trainer.kl_controller.__dict__), "step": step,
             "rng": torch.get_rng_state(), "record": record}
    with atomic_open(path, "wb", encoding=None) as f:
        torch.save(state, f)


def _load_checkpoint(path: Path, trainer) -> tuple[int, dict | None]:
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
    trainer.policy.load_state_dict(state["policy"])
    trainer.policy_optimizer.load_state_dict(state["policy_optimizer"])
    if (trainer.value is None) != (state["value"] is None):
        raise UserError(f"{path}: saved {'with' if state['value'] is not None else 'without'} a value model, "
                        "but this stage's estimator differs; delete it to restart the stage")
    if trainer.value is not None:
        trainer.value.load_state_dict(state["value"])
        trainer.value_optimizer.load_state_dict(state["value_optimizer"])
    trainer.kl_controller.__dict__.update(state["kl_controller"])
    trainer.steps_done = state["step"]
    torch.set_rng_state(state["rng"])
    return state["step"], state.get("record")  # checkpoints of older versions carry no row


def stage_ppo(run: Run, cfg: dict, stage: str, policy_dir: Path, reward_dir: Path, out: Path,
              steps: int, lr: float, overrides: dict | None = None) -> dict:
    """PPO from `policy_dir` against the reward model in `reward_dir`, KL-anchored to `policy_dir`.

    Resumable: every step's state (weights, optimizers, KL controller, RNG) is checkpointed
    atomically, and a restarted stage continues from the last completed step.
    """
    from ..inspect import RolloutRecorder
    from ..ppo import PPOTrainer
    from ..sft.trainer import save_sft

    p = {**cfg["ppo"], **(overrides or {})}
    policy, tok = _load_policy(policy_dir, cfg)
    mcfg = _model_config(cfg)
    if mcfg.lora:
        from ..models import wrap_lora

        policy = wrap_lora(policy, mcfg)
    # The reference is the policy this stage starts from: the SFT model for the cold start, the
    # cold-start policy for the final stage (iterated RLHF, as in Llama 2). With LoRA it is the
    # same weights with the adapter off; otherwise a frozen copy.
    ref = Reference(policy)
    reward = _load_reward(reward_dir, mcfg).eval()
    reward.tokenizer = tok  # saved from the same tokenizer
    pcfg = PPOConfig(**{k: v for k, v in p.items() if k in _fields(PPOConfig)} | {"lr": lr, "seed": cfg["seed"]})
    # Critic-free estimators (GRPO, RLOO, REINFORCE++) run with no value model at all.
    value = None if pcfg.critic_free else build_value_model(policy, reward, mcfg.value_init, mcfg.value_head_hidden)
    from ..data import stops_at_newline

    gcfg = GenerationConfig(max_new_tokens=p["max_new_tokens"], temperature=p["temperature"],
                            stop_at_newline=stops_at_newline(tok), max_prompt_length=512)
    # A few rollouts per step, token by token, for `ppolab inspect` (RUN/rollouts.jsonl; 0 = off).
    # A resumed stage redoes the steps after its checkpoint; the recorder drops their old lines.
    recorder = RolloutRecorder(run / "rollouts.jsonl", per_step=p.get("record_rollouts", 4), stage=stage)
    objective = _ppo_reward(run, cfg, stage, p, reward, policy, tok)
    trainer = PPOTrainer(pcfg, policy, ref, value, objective, tok, gcfg, recorder=recorder)
    prompts = _ppo_prompts(cfg, tok)

    ckpt = run / f".{stage}.checkpoint.pt"
    start = 0
    if ckpt.exists():
        start, record = _load_checkpoint(ckpt, trainer)
        print(f"{stage}: resuming at step {start} from {ckpt}")
        if record is not None and start not in {r["step"] for r in run.step_rows(stage)}:
            run.log(stage, record)  # killed after the checkpoint, before its metrics row

    from tqdm.auto import tqdm

    t0 = time.time()
    for step in tqdm(range(start, steps), desc=stage, initial=start, total=steps):
        # group_size samples of each prompt: batch_size / group_size distinct prompts per step
        batch = random.Random(cfg["seed"] * 100_003 + step).sample(prompts, pcfg.batch_size // pcfg.group_size)
        stats = trainer.ppo_step(batch)
        record = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        record["timings"] = stats["timings"]
        record["sample"] = stats["generated_texts"][0]
        for name, part in getattr(objective, "last_parts", {}).items():
            record[f"reward_{name}"] = float(part.mean())  # weighted share of score_mean
        # Checkpoint first (it carries this step's row), metrics row second: a kill between the two
        # neither re-runs the step nor loses its row; the resumed stage logs it from the checkpoint.
        _save_checkpoint(ckpt, trainer, step + 1, record)
        run.log(stage, record)
    policy = trainer.policy.merge_and_unload() if hasattr(trainer.policy, "merge_and_unload") else trainer.policy
    save_sft(policy, tok, out)
    ev = _evaluate(policy, tok, cfg)
    rows = [r for r in run.step_rows(stage) if "score_mean" in r][-steps:]
    k = max(1, len(rows) // 10)
    mean = lambda key, part: float(sum(r[key] for r in part) / len(part))  # noqa: E731
    result = {
        "reward_start": mean("score_mean", rows[:k]), "reward_end": mean("score_mean", rows[-k:]),
        "kl_per_token_end": mean("kl_per_token", rows[-k:]), "kl_per_sequence_end": mean("kl", rows[-k:]),
        "chrf_test": ev["chrf"], "bleu_test": ev["bleu"], "steps": steps, "seconds": time.time() - t0,
        "eval": _flores_block(policy, tok, cfg, ev),
    }
    run.log(stage, {"event": "done", **result})
    ckpt.unlink(missing_ok=True)
    return result


# -- human feedback (simulated annotator in the demo) ----------------------------------------------
def _candidates(policy, tok, reward: RewardModel, examples, n: int, max_new_tokens: int):
    """For each example: n sampled translations, deduplicated, ranked by the reward model."""
    out = []
    for direction in dict.fromkeys(ex.direction for ex in examples):  # any pair, in order of appearance
        src, tgt = direction.split("->")
        chunk = [ex for ex in examples if ex.direction == direction]
        samples = translate(policy, tok, [ex.source for ex in chunk], src, tgt, do_sample=True,
                            num_return_sequences=n, max_new_tokens=max_new_tokens)
        for ex, cands in zip(chunk, samples):
            texts = list(dict.fromkeys(c.strip() for c in cands if c.strip()))
            if len(texts) < 2:
                continue
            prompt = build_prompt(ex.source, src, tgt, tok)
            scores = reward.score([prompt] * len(texts), [as_response(t) for t in texts]).tolist()
            ranked = sorted(zip(texts, scores), key=lambda ts: -ts[1])
            out.append((ex, ranked))
    return out


def _http(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read().decode("utf-8"))


def simulate_annotator(url: str, references: dict, name: str = "simulated-chrf", custom_every: int = 0) -> int:
    """Annotate every item through the same HTTP API as the web page.

    The simulated annotator ranks the shown candidates by sentence chrF against the reference,
    and every `custom_every`-th item it also writes the reference as a better translation.
    """
    done = 0
    while True:
        item = _http(f"{url}/api/next?annotator={name}")
        if item.get("done"):
            return done
        ref = references[(item["source"], item["direction"])]
        cands = item["candidates"]
        chrf = sentence_chrf([c["text"] for c in cands], [ref] * len(cands))
        ranking = [c["index"] for _, c in sorted(zip(chrf, cands), key=lambda x: -x[0])]
        custom = ref if custom_every and done % custom_every == 0 else None
        _http(f"{url}/api/submit", {"item_id": item["item_id"], "annotator": name, "ranking": ranking,
                                    "custom_translation": custom, "submission_id": str(uuid.uuid4())})
        done += 1


def stage_feedback(run: Run, cfg: dict) -> dict:
    from ..feedback import FeedbackStore, make_server

    f = cfg["feedback"]
    store = FeedbackStore(run / "feedback.sqlite", shown=f["shown"])
    # Feedback sources come from the validation split: never the test split used for chrF.
    examples = _split(cfg, "valid")
    random.Random(cfg["seed"] + 2).shuffle(examples)
    examples = examples[: f["items"]]
    if store.stats()["items"] == 0:
        policy, tok = _load_policy(run / "ppo_model_coldstart", cfg)
        policy.eval()
        reward = _load_reward(run / "reward_model_coldstart", _model_config(cfg)).eval()
        ranked = _candidates(policy, tok, reward, examples, f["candidates"], cfg["ppo"]["max_new_tokens"])
        store.add_items([{"source": ex.source, "direction": ex.direction, "reference": ex.target,
                          "candidates": [(t, s) for t, s in cands], "model_version": "ppo_model_coldstart"}
                         for ex, cands in ranked])
    server = make_server(store, port=f.get("port", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        references = {(ex.source, ex.direction): ex.target for ex in examples}
        n = simulate_annotator(server.url.rstrip("/"), references, custom_every=f["custom_every"])
    finally:
        server.shutdown()
        server.server_close()
    path = store.export_jsonl(run.path)
    pairs = sum(1 for _ in open(path, encoding="utf-8"))
    result = {"annotated_this_run": n, "pairs": pairs, **{k: v for k, v in store.stats().items() if k != "annotators"},
              "annotator": "simulated (ranks by sentence chrF against the reference; no human present)"}
    run.log("feedback", result)
    return result


def _human_pairs(run: Run) -> list[dict]:
    """The judgements as pairs: rankings and better translations (human_preferences.jsonl, exported
    from the store) and 1-5 ratings (rating_preferences.jsonl, from `ppolab feedback import`)."""
    out = []
    for name in ("human_preferences.jsonl", "rating_preferences.jsonl"):
        path = run / name
        if path.exists():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    p = json.loads(line)
                    if not isinstance(p.get("direction"), str) or "->" not in p["direction"]:
                        raise UserError(f"{path}:{n}: direction {p.get('direction')!r}: expected a pair such as "
                                        "eng->arb (`ppolab feedback import --direction`)")
                    out.append(p)
    return out


def stage_reward_model_human(run: Run, cfg: dict, stage: str = "reward_model_human", out: Path | None = None) -> dict:
    """The human reward model, continuing from the cold-start one, on every judgement so far."""
    from ..synthetic import load_preferences

    h = cfg["reward_model_human"]
    human = _human_pairs(run)
    if not human:
        raise RuntimeError(f"{run / 'human_preferences.jsonl'}: no human pairs to train on")
    tok_model = _load_reward(run / "reward_model_coldstart", _model_config(cfg))
    tok = tok_model.tokenizer

    def to_pair(p):
        src, tgt = p["direction"].split("->")
        return {"prompt": build_prompt(p["source"], src, tgt, tok),
                "chosen": as_response(p["chosen"]), "rejected": as_response(p["rejected"])}

    # Split by item (a rating's id, else its source): one judgement's pairs stay on one side.
    key = lambda p: str(p["item_id"] if p.get("item_id") is not None else p["source"])  # noqa: E731
    val = [to_pair(p) for p in human if _bucket(key(p), h["val_fraction"])]
    train = [to_pair(p) for p in human if not _bucket(key(p), h["val_fraction"])]
    n_human_train = len(train)
    # A little synthetic data in the mix keeps the model from forgetting what it learned there.
    synth = [_rm_pair(p) for p in load_preferences(run / "synthetic_preferences.jsonl")
             if not _bucket(p["source"], cfg["reward_model"]["val_fraction"])]
    random.Random(cfg["seed"]).shuffle(synth)
    train += synth[: h.get("mix_synthetic", 0)]
    result = _train_rm(run, cfg, stage, tok_model, train, val, {**cfg["reward_model"], **h},
                       out or run / "reward_model_human")
    result.update(pairs=len(human), human_train_pairs=n_human_train, human_val_pairs=len(val))
    run.log(stage, {"event": "done", **{k: v for k, v in result.items() if k != "history"}})
    return result


# Each stage's seed offset (fixed, so adding a stage never changes another stage's random stream).
STAGE_SEED_INDEX = {"sft": 0, "synth": 1, "reward_model": 2, "ppo_coldstart": 3, "feedback": 4,
                    "reward_model_human": 5, "ppo_final": 6, "base": 7}


# -- the whole loop --------------------------------------------------------------------------------
def run_pipeline(run: Run, cfg: dict, only: list[str] | None = None) -> dict:
    """Run every stage not yet completed, in order; return all stage results."""
    validate_settings(cfg)  # every setting, before any stage writes anything
    if cfg.get("device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("this preset needs a CUDA GPU (device=cuda) and none is visible; "
                           "use --preset cpu-test or fast on a CPU")
    torch.manual_seed(cfg["seed"])
    torch.set_num_threads(int(cfg.get("threads") or 1))
    steps = {
        "base": lambda: stage_base(run, cfg),
        "sft": lambda: stage_sft(run, cfg),
        "synth": lambda: stage_synth(run, cfg),
        "reward_model": lambda: stage_reward_model(run, cfg),
        "ppo_coldstart": lambda: stage_ppo(run, cfg, "ppo_coldstart", run / "sft", run / "reward_model_coldstart",
                                           run / "ppo_model_coldstart", cfg["ppo"]["steps"], cfg["ppo"]["lr"]),
        "feedback": lambda: stage_feedback(run, cfg),
        "reward_model_human": lambda: stage_reward_model_human(run, cfg),
        "ppo_final": lambda: stage_ppo(run, cfg, "ppo_final", run / "ppo_model_coldstart",
                                       run / "reward_model_human", run / "ppo_model_final",
                                       cfg["ppo_final"]["steps"], cfg["ppo"]["lr"] * cfg["ppo_final"]["lr_factor"],
                                       {k: v for k, v in cfg["ppo_final"].items() if k not in ("steps", "lr_factor")}),
    }
    for name, fn in steps.items():
        if only and name not in only:
            continue
        if run.done(name):
            print(f"[{name}] already complete in {run.path}; skipping")
            continue
        print(f"[{name}] running ...", flush=True)
        for stale in remove_stale_temporaries(run.path):
            print(f"[{name}] removed {stale}, left by an interrupted write", flush=True)
        # Each stage starts from its own seed, so a stage gives the same result whether the stages
        # before it ran in this process or in an earlier one (a resumed run equals a fresh one).
        torch.manual_seed(cfg["seed"] * 1_000 + STAGE_SEED_INDEX[name])
        t0 = time.time()
        result = fn()
        result["seconds"] = round(time.time() - t0, 1)
        run.complete(name, result)
        print(f"[{name}] done in {result['seconds']:.0f} s", flush=True)
    return run.stages

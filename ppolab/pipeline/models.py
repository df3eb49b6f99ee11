"""Loading the run's models the way every stage does (the `model` section), and sampling them."""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..data import build_prompt
from ..model_files import check_model_folder, check_reward_folder
from ..models import RewardModel
from ..sft import load_sft
from ..sft.translate import TARGET_SEPARATOR, translate
from .config import ModelConfig, PipelineConfig
from .data import directions, load_split


def as_response(text: str) -> str:
    """The response text as the policy generates it after a prompt (see ppolab.sft.translate)."""
    return TARGET_SEPARATOR + text.strip()


def set_prompt_format(tok, cfg: PipelineConfig) -> None:
    """The preset's prompt format, if it names one (saved with every model trained from here)."""
    if cfg.prompt.format:
        tok.ppolab_prompt_format = cfg.prompt.format


def sft_dir(run) -> Path:
    """The SFT model later stages load: `sft/best/` when the SFT stage chose it (see
    `sft.checkpoint`), else `sft/` (its `final/`). `run`: a Run or a run directory."""
    root = Path(getattr(run, "path", run))
    stages = root / "stages.json"
    chosen = json.loads(stages.read_text(encoding="utf-8")).get("sft", {}).get("checkpoint") if stages.exists() else None
    return root / "sft" / "best" if chosen == "best" else root / "sft"


def load_policy(path: Path, cfg: PipelineConfig | None = None):
    """`(model, tokenizer)` of a policy folder, loaded with the run's `model` section (dtype,
    quantisation, vocabulary trim); LoRA is the caller's to add."""
    check_model_folder(path, "policy")
    return load_sft(path, cfg.model if cfg is not None else None)


def load_reward(path: Path, mcfg: ModelConfig | None = None) -> RewardModel:
    check_reward_folder(path)  # a missing or half-copied folder: one error naming the file
    return RewardModel.load(path, mcfg)


def policy_samples(model, tok, cfg: PipelineConfig, n: int) -> tuple[list[str], list[str]]:
    """Prompts and sampled responses of `model` on n training sources, half per direction."""
    model.eval()
    examples = load_split(cfg, "train")
    random.Random(cfg.seed + 1).shuffle(examples)
    prompts, responses = [], []
    for direction, (src, tgt) in directions(cfg).items():
        chunk = [ex for ex in examples if ex.direction == direction][: n // 2]
        if not chunk:
            continue
        hyps = translate(model, tok, [ex.source for ex in chunk], src, tgt, do_sample=True,
                         max_new_tokens=cfg.generation.max_new_tokens)
        prompts += [build_prompt(ex.source, src, tgt, tok) for ex in chunk]
        responses += [as_response(h) for h in hyps]
    return prompts, responses

"""Supervised fine-tuning on the train split (a tiny model from scratch, or a pretrained one).

Later stages load `sft/best/` (best validation chrF) or `sft/final/` (`sft.checkpoint`); with
`sft.epochs=0` and `model.policy_path`, the given model is the SFT model as it is.
"""
from __future__ import annotations

import random
import time

from ...models import build_tiny_causal_lm, build_tokenizer, load_causal_lm, load_tokenizer, wrap_lora
from ...models.vocab_trim import apply_vocab_trim
from ...sft import SFTConfig, save_sft, train_sft
from ..config import PipelineConfig, section_part
from ..data import load_split
from ..evaluate import evaluate, flores_block
from ..models import load_policy, set_prompt_format
from ..run import Run


def run(run: Run, cfg: PipelineConfig) -> dict:
    train, valid = load_split(cfg, "train"), load_split(cfg, "valid")
    if cfg.sft.train_limit:  # a seeded subset (both directions) for slow real models
        random.Random(cfg.seed).shuffle(train)
        train = train[: cfg.sft.train_limit]
    mcfg = cfg.model
    if mcfg.policy_path:
        tok, model = load_tokenizer(mcfg.policy_path), load_causal_lm(mcfg.policy_path, mcfg)
        model = apply_vocab_trim(model, tok, mcfg.vocab_trim)
        set_prompt_format(tok, cfg)
        if mcfg.lora:  # LoRA SFT; save_sft merges the adapter, so later stages load a plain model
            model = wrap_lora(model, mcfg)
    else:
        texts = [t for ex in train for t in (ex.source, ex.target)]
        tok = build_tokenizer(texts, vocab_size=cfg.tokenizer.vocab_size)
        set_prompt_format(tok, cfg)
        model = build_tiny_causal_lm(mcfg, tok)
    t0 = time.time()
    if cfg.sft.epochs == 0:  # model.policy_path is already fine-tuned: it is the SFT model
        save_sft(model.merge_and_unload() if hasattr(model, "merge_and_unload") else model, tok, run / "sft" / "final")
        history, checkpoint = [{}], "given"
    else:
        history = train_sft(model, tok, train, valid, section_part(cfg.sft, SFTConfig), out_dir=run / "sft",
                            log=run.logger("sft"))
        checkpoint = "final"
        if cfg.sft.checkpoint == "best" and valid and (run / "sft" / "best" / "config.json").is_file():
            checkpoint = "best"
            model, tok = load_policy(run / "sft" / "best", cfg)
    ev = evaluate(model, tok, cfg)
    result = {"eval": flores_block(model, tok, cfg, ev), "checkpoint": checkpoint,
              "chrf_test": ev["chrf"], "bleu_test": ev["bleu"], "chrf_pp_test": ev["chrf_pp"],
              "valid_chrf": history[-1].get("valid_chrf"), "train_loss": history[-1].get("train_loss"),
              "parameters": sum(p.numel() for p in model.parameters()), "seconds": time.time() - t0}
    run.log("sft", {"event": "test", **result})
    return result

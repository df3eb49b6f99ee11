"""Reward-model training (ppolab.reward): BT loss, unfreezing, normalisation, save/load/continue."""
from __future__ import annotations

import functools
import json
import math
import random

import pytest
import torch

from ppolab.config import ConfigError, ModelConfig
from ppolab.data import build_prompt, load_shipped_corpus
from ppolab.models import RewardModel, build_tokenizer
from ppolab.models.builders import build_tiny_causal_lm
from ppolab.reward import (
    RewardTrainConfig,
    apply_unfreeze_schedule,
    build_reward_model,
    continue_training,
    decoder_layers,
    evaluate_reward_model,
    normalize_reward_model,
    tokenize_pairs_for_rm,
    train_reward_model,
    unfrozen_layer_count,
)

@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread for these tiny models, restored afterwards.

    On a shared, oversubscribed CPU two OpenMP threads spin-wait on each other: a training step
    measured ~30x slower with 2 threads than with 1 (54 s vs 1.5 s for the same run).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(arch="llama", n_layers=2, hidden_size=32, n_heads=4, n_kv_heads=2, intermediate_size=64)


def _gibberish(rng: random.Random, n_words: int) -> str:
    return " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(2, 7)))
                    for _ in range(n_words))


@functools.lru_cache(maxsize=None)
def _pairs(split: str, n: int) -> tuple[dict, ...]:
    """Learnable preferences: the Arabic reference beats Latin gibberish of similar length."""
    rng = random.Random(split)
    rows = [e for e in load_shipped_corpus(split, src="eng")][:n]
    return tuple(
        {"prompt": build_prompt(e.source, "eng", "arb"), "chosen": " " + e.target,
         "rejected": " " + _gibberish(rng, len(e.target.split()))}
        for e in rows
    )


@functools.lru_cache(maxsize=None)
def _tokenizer():
    texts = [p["prompt"] + p["chosen"] + p["rejected"] for p in _pairs("train", 120)]
    return build_tokenizer(texts, vocab_size=400)


def _model(head_hidden=0, seed=0, **kw) -> RewardModel:
    lm = build_tiny_causal_lm(ModelConfig(seed=seed, **TINY), _tokenizer())
    cfg = RewardTrainConfig(head_hidden=head_hidden)
    return build_reward_model(lm, _tokenizer(), cfg, **kw)


def _cfg(**kw) -> RewardTrainConfig:
    base = dict(epochs=2, lr=2e-3, batch_size=16, head_hidden=0, seed=0)
    base.update(kw)
    return RewardTrainConfig(**base)


def test_tokenized_rows_score_like_reward_model_score():
    """Training rows are exactly the text RewardModel.score scores: same scores, EOS last."""
    model, tok = _model(head_hidden=8), _tokenizer()
    pairs = list(_pairs("valid", 5))
    enc = tokenize_pairs_for_rm(tok, pairs, max_length=512)
    assert enc["input_ids"].shape[0] == 10
    assert (enc["input_ids"][:, -1] == tok.eos_token_id).all()  # left padded: EOS at the end
    with torch.no_grad():
        batch = model.score_ids(enc["input_ids"], enc["attention_mask"])
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    torch.testing.assert_close(batch, model.score(prompts, responses, batch_size=3), atol=1e-5, rtol=1e-5)
    # Over-long rows keep their last tokens (the response and its EOS).
    short = tokenize_pairs_for_rm(tok, pairs, max_length=12)
    assert short["input_ids"].shape[1] == 12
    full_ids = enc["input_ids"][0][enc["attention_mask"][0].bool()]
    assert torch.equal(short["input_ids"][0], full_ids[-12:])


def test_initial_loss_matches_per_pair_loop_reference():
    model = _model(head_hidden=16)
    torch.manual_seed(1)
    with torch.no_grad():  # make the initial rewards spread, so the check is not trivially log 2
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    pairs = list(_pairs("valid", 12))
    reference = []
    for p in pairs:
        rc = float(model.score([p["prompt"]], [p["chosen"]]))
        rr = float(model.score([p["prompt"]], [p["rejected"]]))
        reference.append(-math.log(1.0 / (1.0 + math.exp(-(rc - rr)))))
    ref_loss = sum(reference) / len(reference)
    assert abs(ref_loss - math.log(2)) > 1e-3

    ev = evaluate_reward_model(model, pairs, batch_size=5, max_length=512)
    assert ev["n"] == 12 and ev["loss"] == pytest.approx(ref_loss, abs=1e-5)

    steps = []
    train_reward_model(model, pairs, config=_cfg(epochs=1, batch_size=12, max_length=512),
                       log=lambda d: steps.append(d) if d["kind"] == "step" else None, progress=False)
    assert len(steps) == 1 and steps[0]["loss"] == pytest.approx(ref_loss, abs=1e-5)


def test_margin_from_scores_enters_the_loss():
    model = _model()
    pairs = [dict(p, chosen_score=0.9, rejected_score=0.1) for p in _pairs("valid", 6)]
    plain = evaluate_reward_model(model, pairs)
    rc_rr = plain["mean_margin"]
    with_margin = evaluate_reward_model(model, pairs, margin_from_scores=2.0)
    # margin 2 * 0.8 = 1.6 must be beaten: the loss grows
    assert with_margin["loss"] > plain["loss"] + 0.5
    assert with_margin["accuracy"] == plain["accuracy"] and with_margin["mean_margin"] == rc_rr


def test_training_learns_held_out_preferences(tmp_path):
    model = _model(head_hidden=32)
    train, valid = list(_pairs("train", 64)), list(_pairs("valid", 30))
    before = evaluate_reward_model(model, valid)
    epochs = []
    history = train_reward_model(model, train, valid, _cfg(epochs=3, eval_every_epochs=2), out_dir=tmp_path / "rm",
                                 log=lambda d: epochs.append(d) if d["kind"] == "epoch" else None,
                                 progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2] and len(epochs) == 3
    # validated after epoch 2 (every 2nd) and after the last one, not after epoch 1
    assert [h["val_accuracy"] is None for h in history] == [True, False, False]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "unfrozen_layers", "seconds"):
        assert key in history[-1]
    assert history[-1]["val_accuracy"] > 0.8, (before, history)
    assert history[-1]["val_loss"] < before["loss"]
    saved = json.loads((tmp_path / "rm" / "train_history.json").read_text())
    assert saved == json.loads(json.dumps(history))
    assert (tmp_path / "rm" / "reward_config.json").exists()


def test_top_first_unfreezes_top_layers_then_embeddings():
    assert [unfrozen_layer_count(4, e, 3) for e in range(3)] == [2, 3, 4]
    assert [unfrozen_layer_count(2, e, 2) for e in range(2)] == [1, 2]
    assert unfrozen_layer_count(3, 0, 1) == 3

    model = _model()
    layers = decoder_layers(model.backbone)
    assert len(layers) == 2
    cfg = _cfg(epochs=2, unfreeze_schedule="top_first")
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: dict[int, set[str]] = {}
    changed_after_epoch0: set[str] = set()

    def log(d):
        if d["kind"] == "step" and d["epoch"] not in seen:
            seen[d["epoch"]] = {n for n, p in model.named_parameters() if p.requires_grad}
        if d["kind"] == "epoch" and d["epoch"] == 0:
            changed_after_epoch0.update(n for n, p in model.named_parameters() if not torch.equal(p, initial[n]))

    history = train_reward_model(model, list(_pairs("train", 32)), config=cfg, log=log, progress=False)
    assert [h["unfrozen_layers"] for h in history] == [1, 2]
    top = {n for n in seen[0] if n.startswith("backbone.layers.1.")}
    assert top and not any(n.startswith("backbone.layers.0.") for n in seen[0])
    assert not any("embed" in n for n in seen[0])
    assert {n for n in seen[0] if n.startswith("head.")} == {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert "backbone.norm.weight" in seen[0]
    # Only epoch-0 trainable parameters moved during epoch 0 (and all of them did).
    assert changed_after_epoch0 and changed_after_epoch0 <= seen[0]
    assert any(n.startswith("backbone.layers.1.") for n in changed_after_epoch0)
    # Last epoch: everything trains, embeddings included.
    assert seen[1] == {n for n, _ in model.named_parameters()}
    # requires_grad flags are restored afterwards.
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_backbone_keeps_backbone_exactly():
    model = _model(head_hidden=8)
    backbone = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    head = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    history = train_reward_model(model, list(_pairs("train", 32)), config=_cfg(epochs=1, freeze_backbone=True),
                                 progress=False)
    assert history[0]["unfrozen_layers"] == 0
    assert history[0]["trainable_params"] == sum(p.numel() for p in model.head.parameters())
    for n, p in model.backbone.named_parameters():
        assert torch.equal(p, backbone[n]), n
    assert any(not torch.equal(p, head[n]) for n, p in model.head.named_parameters())


def test_normalization_centres_and_scales_given_samples():
    model = _model(head_hidden=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread the raw scores away from the tiny initial ones
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    pairs = _pairs("valid", 30)
    prompts = [p["prompt"] for p in pairs]
    responses = [p["chosen"] for p in pairs]
    mean, std = normalize_reward_model(model, prompts, responses, batch_size=7)
    scores = model.score(prompts, responses)
    assert float(scores.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(scores.std()) == pytest.approx(1.0, abs=1e-4)
    # Normalising again (already normalised) finds the same raw statistics.
    assert normalize_reward_model(model, prompts, responses) == pytest.approx((mean, std), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        normalize_reward_model(model, prompts[:1], responses[:1])


def test_save_load_continue_training(tmp_path):
    model = _model(head_hidden=16)
    train, valid = list(_pairs("train", 32)), list(_pairs("valid", 10))
    train_reward_model(model, train, config=_cfg(epochs=1), out_dir=tmp_path / "cold", progress=False)
    prompts = [p["prompt"] for p in valid]
    responses = [p["rejected"] for p in valid]
    normalize_reward_model(model, prompts, [p["chosen"] for p in valid])
    model.save(tmp_path / "cold")
    before = model.score(prompts, responses)

    loaded = RewardModel.load(tmp_path / "cold")
    torch.testing.assert_close(loaded.score(prompts, responses), before, rtol=0, atol=1e-6)

    human = [dict(p, chosen=p["chosen"]) for p in _pairs("train", 48)[32:]]
    tuned, history = continue_training(tmp_path / "cold", human, valid, _cfg(epochs=1), out_dir=tmp_path / "human",
                                       progress=False)
    assert len(history) == 1 and history[0]["val_accuracy"] is not None
    assert not torch.allclose(tuned.score(prompts, responses), before)
    reloaded = RewardModel.load(tmp_path / "human")
    torch.testing.assert_close(reloaded.score(prompts, responses), tuned.score(prompts, responses), rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "human" / "train_history.json").read_text())[0]["steps"] == 1


def test_multi_head_model_trains():
    model = _model(head_hidden=16, head_names=("adequacy", "fluency"), head_weights=[3.0, 1.0])
    assert model.head_weights.tolist() == pytest.approx([0.75, 0.25])
    valid = list(_pairs("valid", 20))
    history = train_reward_model(model, list(_pairs("train", 48)), valid, _cfg(epochs=2), progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.7
    enc = tokenize_pairs_for_rm(model.tokenizer, valid[:2], 192)
    assert model.score_last(enc["input_ids"], enc["attention_mask"], per_head=True).shape == (4, 2)


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("lr", 0.0), ("lr", float("nan")), ("batch_size", 0), ("max_length", 1),
    ("margin_from_scores", float("inf")), ("head_hidden", -1), ("unfreeze_schedule", "bottom_first"),
    ("weight_decay", -0.1), ("grad_clip", -1.0), ("eval_every_epochs", 0), ("freeze_backbone", "yes"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"RewardTrainConfig.{field}"):
        RewardTrainConfig(**{field: value})


def test_conflicting_freeze_settings_are_rejected():
    with pytest.raises(ConfigError, match="unfreeze_schedule"):
        RewardTrainConfig(freeze_backbone=True, unfreeze_schedule="top_first")


def test_bad_pairs_are_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="pairs is empty"):
        train_reward_model(model, [], config=_cfg(), progress=False)
    with pytest.raises(ValueError, match="valid_pairs is empty"):
        train_reward_model(model, list(_pairs("valid", 2)), [], config=_cfg(), progress=False)
    with pytest.raises(ValueError, match="missing key 'prompt'"):
        train_reward_model(model, [{"source": "a", "chosen": "b", "rejected": "c"}], config=_cfg(), progress=False)
    bad_score = [dict(_pairs("valid", 1)[0], chosen_score="high", rejected_score=0.1)]
    with pytest.raises(ValueError, match="chosen_score"):
        train_reward_model(model, bad_score, config=_cfg(margin_from_scores=1.0), progress=False)
    with pytest.raises(ValueError, match="pairs is empty"):
        evaluate_reward_model(model, [])
    model.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        train_reward_model(model, list(_pairs("valid", 2)), config=_cfg(), progress=False)


def test_apply_unfreeze_schedule_without_schedule_trains_everything():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    assert apply_unfreeze_schedule(model, _cfg(), 0) == 2
    assert all(p.requires_grad for p in model.parameters())

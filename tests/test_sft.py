"""ppolab.sft: tokenization layout, target-only loss, schedule, a real overfitting run, checkpoints, translate."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ppolab.config import ConfigError, ModelConfig
from ppolab.data import build_prompt, load_shipped_corpus
from ppolab.models import build_tiny_causal_lm, build_tokenizer
from ppolab.sft import (
    SFTConfig,
    evaluate_translation,
    format_target,
    load_sft,
    sft_loss,
    tokenize_sft,
    train_sft,
    translate,
    warmup_linear_decay,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 threads, and on a busy shared CPU 2 threads oversubscribe
    the cores and run ~20x slower; restore the session setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def examples():
    """8 train examples: 4 corpus rows, each in both directions (EN->AR and FR->AR)."""
    return list(load_shipped_corpus("train")[:8])


@pytest.fixture(scope="module")
def tok(examples):
    train = load_shipped_corpus("train")[:40]
    texts = [t for e in train for t in (e.source, e.target)]
    texts += [build_prompt(e.source, e.src_lang, e.tgt_lang) for e in examples]
    return build_tokenizer(texts, vocab_size=400)


def tiny_model(tok, arch="llama", seed=0):
    cfg = ModelConfig(arch=arch, n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=128, seed=seed)
    return build_tiny_causal_lm(cfg, tok)


OVERFIT = SFTConfig(epochs=40, lr=3e-3, batch_size=8, warmup_ratio=0.1, eval_every_epochs=20, seed=0)


@pytest.fixture(scope="module")
def overfit(tok, examples, tmp_path_factory):
    """A model trained to memorise the 8 examples, with its out_dir and history."""
    out = tmp_path_factory.mktemp("sft")
    model = tiny_model(tok)
    history = train_sft(model, tok, examples, examples[:4], OVERFIT, out_dir=out, progress=False)
    return model, out, history


# ------------------------------------------------------------------------------ tokenization


def test_labels_mask_covers_exactly_target_and_eos(tok, examples):
    batch = tokenize_sft(tok, examples, max_length=128)
    ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels_mask"]
    assert ids.shape == attn.shape == labels.shape and ids.shape[0] == len(examples)
    lengths = attn.sum(1)
    assert len(set(lengths.tolist())) > 1, "need rows of different lengths to test padding"
    for i, ex in enumerate(examples):
        row, a, lab = ids[i], attn[i].bool(), labels[i].bool()
        # left padding: pads first, then real tokens; labels only on real tokens
        assert torch.equal(a, torch.arange(ids.shape[1]) >= ids.shape[1] - lengths[i])
        assert not (lab & ~a).any()
        assert (row[~a] == tok.pad_token_id).all()
        target = tok.decode(row[lab], skip_special_tokens=False)
        assert target == format_target(ex.target) + tok.eos_token == " " + ex.target + tok.eos_token
        prompt = tok.decode(row[a & ~lab], skip_special_tokens=False)
        assert prompt == build_prompt(ex.source, ex.src_lang, ex.tgt_lang)
        # labels are one contiguous block that ends the row
        assert lab[-1] and torch.equal(lab.nonzero().flatten(), torch.arange(lab.nonzero().min(), ids.shape[1]))


def test_format_target_uses_one_space_and_rejects_empty():
    assert format_target("  مرحبا  ") == " مرحبا"
    with pytest.raises(ValueError, match="target"):
        format_target("   ")


def test_too_long_example_is_an_error_naming_its_origin(tok, examples):
    with pytest.raises(ValueError, match=r"train\.tsv:\d+.*max_length=10"):
        tokenize_sft(tok, examples, max_length=10)


# ------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_loss_equals_per_example_reference_on_target_tokens_only(tok, examples, arch):
    """Batched, padded loss == loop over unpadded examples, CE summed on target positions only."""
    model = tiny_model(tok, arch=arch, seed=1)
    batch = tokenize_sft(tok, examples, max_length=128)
    got = sft_loss(model, **batch)

    total, count = 0.0, 0
    for i in range(len(examples)):
        real = batch["attention_mask"][i].bool()
        ids, lab = batch["input_ids"][i][real], batch["labels_mask"][i][real].bool()
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].float()
        for t in lab.nonzero().flatten().tolist():  # token t is predicted at position t - 1
            total += F.cross_entropy(logits[t - 1][None], ids[t][None], reduction="sum").item()
            count += 1
    assert count == int(batch["labels_mask"].sum())
    assert got.item() == pytest.approx(total / count, rel=1e-5, abs=1e-5)


def test_loss_ignores_padding_and_prompt_labels(tok, examples):
    """Extra left padding leaves the loss unchanged; putting labels on the prompt would change it."""
    model = tiny_model(tok, seed=2)
    batch = tokenize_sft(tok, examples[:4], max_length=128)
    base = sft_loss(model, **batch).item()
    pad = lambda x, v: torch.cat([torch.full((x.shape[0], 5), v, dtype=x.dtype), x], 1)  # noqa: E731
    padded = dict(input_ids=pad(batch["input_ids"], tok.pad_token_id),
                  attention_mask=pad(batch["attention_mask"], 0), labels_mask=pad(batch["labels_mask"], 0))
    assert sft_loss(model, **padded).item() == pytest.approx(base, rel=1e-5)
    widened = dict(batch, labels_mask=batch["attention_mask"].clone())
    assert sft_loss(model, **widened).item() != pytest.approx(base, rel=1e-3)


# -------------------------------------------------------------------------------- schedule


def test_warmup_then_linear_decay_values():
    lr = [warmup_linear_decay(s, total_steps=10, warmup_steps=4) for s in range(10)]
    assert lr == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert [warmup_linear_decay(s, 4, 0) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_lr_logged_per_epoch_follows_the_schedule(overfit):
    _, _, history = overfit
    total, warmup = OVERFIT.epochs, round(OVERFIT.warmup_ratio * OVERFIT.epochs)  # 1 step per epoch
    for rec in history:
        expected = OVERFIT.lr * warmup_linear_decay(rec["step"] - 1, total, warmup)
        assert rec["lr"] == pytest.approx(expected)


# -------------------------------------------------------------------------------- training


def test_overfitting_eight_examples_learns_them(overfit, tok, examples):
    model, _, history = overfit
    assert len(history) == OVERFIT.epochs
    assert history[-1]["train_loss"] < 0.35 * history[0]["train_loss"]
    assert [r["epoch"] for r in history if r["valid_chrf"] is not None] == [20, 40]
    result = evaluate_translation(model, tok, examples, max_new_tokens=32, return_hypotheses=True)
    exact = [h == ex.target for h, ex in zip(result["hypotheses"], examples)]
    assert sum(exact) >= 1, result["hypotheses"]
    assert result["n"] == 8 and set(result["by_direction"]) == {"eng->arb", "fra->arb"}
    assert result["chrf"] > 50


def test_shuffling_is_seeded(tok, examples):
    cfg = SFTConfig(epochs=2, batch_size=3, lr=1e-3, seed=5)
    runs = [train_sft(tiny_model(tok), tok, examples, config=cfg, progress=False) for _ in range(2)]
    assert [r["train_loss"] for r in runs[0]] == [r["train_loss"] for r in runs[1]]


def test_metrics_jsonl_and_log_callable(tok, examples, tmp_path):
    seen = []
    cfg = SFTConfig(epochs=2, batch_size=4, eval_every_epochs=2, eval_max_new_tokens=4, eval_limit=2)
    history = train_sft(tiny_model(tok), tok, examples, examples, cfg, out_dir=tmp_path, log=seen.append,
                        progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == seen == json.loads(json.dumps(history))
    assert set(history[0]) >= {"train_loss", "valid_loss", "valid_chrf", "lr", "seconds"}
    assert history[0]["valid_chrf"] is None and history[1]["valid_chrf"] is not None


def test_bad_config_names_the_field():
    for field, value in [("epochs", 0), ("lr", 0.0), ("batch_size", 0), ("warmup_ratio", 1.0),
                         ("weight_decay", -1.0), ("max_length", 1), ("grad_clip", -1.0),
                         ("eval_every_epochs", 0), ("eval_max_new_tokens", 0), ("eval_limit", 0)]:
        with pytest.raises(ConfigError, match=rf"SFTConfig\.{field}\b"):
            SFTConfig(**{field: value}).validate()
    assert issubclass(ConfigError, ValueError)


def test_train_sft_rejects_bad_inputs(tok, examples):
    with pytest.raises(ConfigError, match="SFTConfig.lr"):
        train_sft(tiny_model(tok), tok, examples, config=SFTConfig(lr=-1.0), progress=False)
    with pytest.raises(ValueError, match="empty"):
        train_sft(tiny_model(tok), tok, [], progress=False)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_logits(overfit, tok, examples):
    model, out, history = overfit
    assert (out / "final" / "config.json").is_file() and (out / "best" / "config.json").is_file()
    assert json.loads((out / "final" / "sft_config.json").read_text())["epochs"] == OVERFIT.epochs
    loaded, loaded_tok = load_sft(out)
    batch = tokenize_sft(loaded_tok, examples, max_length=128)
    assert torch.equal(batch["input_ids"], tokenize_sft(tok, examples, max_length=128)["input_ids"])
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        assert torch.equal(loaded(**kw).logits, model(**kw).logits)
    # a model folder itself loads too
    again, _ = load_sft(out / "final")
    with torch.no_grad():
        assert torch.equal(again(**kw).logits, model(**kw).logits)


def test_lora_policy_is_saved_merged(tok, examples, tmp_path):
    """A LoRA policy trains only its adapter and is checkpointed merged into a plain causal LM."""
    from ppolab.models import build_policy

    cfg = ModelConfig(arch="llama", n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=128,
                      lora=True, lora_target_modules=("q_proj", "v_proj"))
    model = build_policy(cfg, tok)
    train_sft(model, tok, examples, config=SFTConfig(epochs=1, batch_size=8, lr=1e-2), out_dir=tmp_path,
              progress=False)
    loaded, _ = load_sft(tmp_path)
    assert not hasattr(loaded, "peft_config")
    batch = tokenize_sft(tok, examples[:3], max_length=128)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**kw).logits, model(**kw).logits, rtol=1e-4, atol=1e-4)


def test_load_sft_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SFT checkpoint"):
        load_sft(tmp_path / "nowhere")


# ------------------------------------------------------------------------------- translate


def test_translate_batched_equals_one_by_one(tok, examples):
    """Left padding is correct: a batch of different-length prompts decodes as each alone."""
    model = tiny_model(tok, seed=3)
    sources = [ex.source for ex in examples if ex.src_lang == "eng"] + ["Hi.", "Good evening, my friend, and welcome."]
    batched = translate(model, tok, sources, "eng", max_new_tokens=12, batch_size=8)
    single = [translate(model, tok, [s], "eng", max_new_tokens=12, batch_size=1)[0] for s in sources]
    assert batched == single
    assert all(isinstance(t, str) and t == t.strip() for t in batched)


def test_translate_groups_follow_the_callers_order(tok, examples):
    """Batches are sorted by prompt length inside translate: groups still come back per source."""
    model = tiny_model(tok, seed=3)
    sources = sorted({ex.source for ex in examples if ex.src_lang == "eng"}, key=len, reverse=True)[:5]
    greedy = translate(model, tok, sources, "eng", max_new_tokens=10, batch_size=2)
    # temperature 1e-4: sampling is greedy decoding, so each group repeats its own source's answer
    sampled = translate(model, tok, sources, "eng", max_new_tokens=10, batch_size=2, do_sample=True,
                        temperature=1e-4, num_return_sequences=2)
    assert sampled == [[g, g] for g in greedy]


def test_translate_sampling_returns_n_per_source(overfit, tok, examples):
    model = overfit[0]
    torch.manual_seed(0)
    out = translate(model, tok, [examples[0].source, examples[2].source], "eng", max_new_tokens=8,
                    do_sample=True, temperature=1.0, top_k=0, top_p=0.9, num_return_sequences=3)
    assert len(out) == 2 and all(len(group) == 3 and all(isinstance(t, str) for t in group) for group in out)
    with pytest.raises(ValueError, match="do_sample"):
        translate(model, tok, ["Hi."], "eng", num_return_sequences=2)
    with pytest.raises(TypeError, match="list of strings"):
        translate(model, tok, "Hi.", "eng")
    assert translate(model, tok, [], "eng") == []

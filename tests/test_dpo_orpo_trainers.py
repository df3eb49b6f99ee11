"""Tests of sequence log-probs, pair tokenization and the DPO / ORPO trainers on a tiny Llama."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

from ppolab.preference import (
    DPOConfig,
    ORPOConfig,
    log_odds,
    orpo_odds_ratio_loss,
    reference_logps,
    sequence_logprobs,
    tokenize_pairs,
    train_dpo,
    train_orpo,
)

# Prompts and responses of different lengths so every batch needs left padding.
PAIRS = [
    {"prompt": "EN: cat ->", "chosen": " qiTTa", "rejected": " kalb!!", "source": "t", "direction": "en-ar",
     "chosen_score": 0.9, "rejected_score": 0.1, "strategies": ["a"]},
    {"prompt": "FR: bonjour le monde ->", "chosen": " marhaban", "rejected": " x", "source": "t"},
    {"prompt": "EN: ok", "chosen": " hasanan", "rejected": " la la la la"},
    {"prompt": "FR: merci beaucoup ->", "chosen": " shukran", "rejected": " afwan jazilan"},
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: intra-op threads only add sync overhead, which on the shared
    2-core CI box under load made these tests ~10x slower. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    t = ByT5Tokenizer()
    t.padding_side = "left"
    return t


def tiny_llama(tok, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        **overrides,
    )
    return LlamaForCausalLM(cfg).float()


def batch_of(tok, pairs, max_length=128):
    return tokenize_pairs(
        tok, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs], max_length
    )


@torch.no_grad()
def pair_logps(model, tok, pairs, average=False):
    model.eval()
    lp = sequence_logprobs(model, **batch_of(tok, pairs), average=average)
    n = len(pairs)
    return lp[:n], lp[n:]


# ----------------------------------------------------------------------------- tokenization / logprobs


def test_tokenize_pairs_layout(tok):
    b = batch_of(tok, PAIRS[:2])
    ids, am, lm = b["input_ids"], b["attention_mask"], b["labels_mask"]
    assert ids.shape == am.shape == lm.shape and ids.shape[0] == 4
    for row, (p, resp) in enumerate(
        [(PAIRS[0]["prompt"], PAIRS[0]["chosen"]), (PAIRS[1]["prompt"], PAIRS[1]["chosen"]),
         (PAIRS[0]["prompt"], PAIRS[0]["rejected"]), (PAIRS[1]["prompt"], PAIRS[1]["rejected"])]
    ):
        real = ids[row][am[row].bool()].tolist()
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert real == p_ids + r_ids
        # Left padding: the mask is 0...0 1...1, and the labels cover exactly the response + eos.
        n_pad = ids.shape[1] - len(real)
        assert am[row, :n_pad].sum() == 0 and am[row, n_pad:].all()
        assert (ids[row, :n_pad] == tok.pad_token_id).all()
        assert lm[row].sum() == len(r_ids) and lm[row, -len(r_ids):].all()


def test_tokenize_pairs_truncation(tok):
    b = tokenize_pairs(tok, ["P" * 50], ["c" * 30], ["r" * 5], max_length=20)
    am, lm, ids = b["attention_mask"], b["labels_mask"], b["input_ids"]
    assert am.sum(-1).max() <= 20
    # Prompt cut from the left to max(20 - 31, 10) = 10 tokens, identical in both rows.
    for row in range(2):
        prompt_part = ids[row][am[row].bool() & ~lm[row].bool()]
        assert prompt_part.tolist() == tok("P" * 10, add_special_tokens=False)["input_ids"]
    assert lm[0].sum() == 10  # chosen cut from the right (eos lost)
    assert lm[1].sum() == 6  # rejected fits: 5 bytes + eos
    with pytest.raises(ValueError, match="max_length"):
        tokenize_pairs(tok, ["a"], ["b"], ["c"], max_length=1)
    with pytest.raises(ValueError, match="prompt"):
        tokenize_pairs(tok, [""], ["b"], ["c"], max_length=8)  # ByT5 has no bos: nothing to condition on


def loop_reference(model, ids_row, am_row, lm_row):
    """One sequence alone, unpadded, default positions; per-token python loop."""
    real = ids_row[am_row.bool()]
    labels = lm_row[am_row.bool()]
    logits = model(input_ids=real[None]).logits[0].double()
    total, count = 0.0, 0
    for j in range(1, len(real)):
        if labels[j]:
            total += torch.log_softmax(logits[j - 1], -1)[real[j]].item()
            count += 1
    return total, count


def test_sequence_logprobs_match_unpadded_loop(tok):
    model = tiny_llama(tok).eval()
    b = batch_of(tok, PAIRS)
    assert (b["attention_mask"] == 0).any()  # the batch really is left-padded
    with torch.no_grad():
        summed = sequence_logprobs(model, **b)
        avg = sequence_logprobs(model, **b, average=True)
        ref = [loop_reference(model, b["input_ids"][i], b["attention_mask"][i], b["labels_mask"][i])
               for i in range(len(summed))]
    assert summed.shape == (2 * len(PAIRS),) and summed.dtype == torch.float32
    torch.testing.assert_close(summed, torch.tensor([t for t, _ in ref]), rtol=0, atol=1e-5)
    torch.testing.assert_close(avg, torch.tensor([t / c for t, c in ref]), rtol=0, atol=1e-5)


def test_sequence_logprobs_gradients_and_mask_validation(tok):
    model = tiny_llama(tok)
    b = batch_of(tok, PAIRS[:2])
    lp = sequence_logprobs(model, **b)
    lp.sum().backward()
    assert model.model.embed_tokens.weight.grad is not None
    bad = dict(b)
    bad["labels_mask"] = b["labels_mask"].clone()
    bad["labels_mask"][0, 0] = 1  # a pad (or first) position can't be scored
    with pytest.raises(ValueError, match="labels_mask"):
        sequence_logprobs(model, **bad)
    bad["labels_mask"] = torch.zeros_like(b["labels_mask"])
    with pytest.raises(ValueError, match="labelled"):
        sequence_logprobs(model, **bad)
    with pytest.raises(ValueError, match="attention_mask"):
        sequence_logprobs(model, b["input_ids"], b["attention_mask"][:, 1:], b["labels_mask"])


# ----------------------------------------------------------------------------- DPO


def test_dpo_raises_margin_and_saves(tok, tmp_path):
    policy = tiny_llama(tok)
    policy.train()  # the trainer must switch dropout off and restore this afterwards
    c0, r0 = pair_logps(policy, tok, PAIRS)
    policy.train()
    cfg = DPOConfig(beta=0.1, lr=3e-3, epochs=6, batch_size=2, max_length=64, seed=1)
    out = tmp_path / "dpo_out"
    hist = train_dpo(policy, tok, PAIRS, cfg, out_dir=out, progress=False)
    assert policy.training
    assert len(hist) == 6 * 2
    assert {"loss", "reward_accuracy", "reward_margin", "chosen_rewards", "rejected_rewards",
            "grad_norm"} <= set(hist[0])
    # Step 0: the reference *is* the initial policy, so h = 0 and the loss is log 2.
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert hist[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    c1, r1 = pair_logps(policy, tok, PAIRS)
    margin0, margin1 = (c0 - r0).mean().item(), (c1 - r1).mean().item()
    assert margin1 > margin0 + 1.0, (margin0, margin1)
    assert ((c1 - r1) > (c0 - r0)).all()
    assert hist[-1]["reward_accuracy"] == 1.0 and hist[-1]["loss"] < math.log(2)
    # Atomic save: the directory is complete and no temp dir is left behind.
    assert (out / "config.json").exists() and (out / "training_log.json").exists()
    assert json.loads((out / "training_log.json").read_text())["config"]["beta"] == 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo_out"]
    reloaded = LlamaForCausalLM.from_pretrained(out)
    torch.testing.assert_close(pair_logps(reloaded, tok, PAIRS)[0], c1)
    # Saving again replaces the directory.
    train_dpo(policy, tok, PAIRS[:1], DPOConfig(epochs=1), out_dir=out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo_out"]


def test_dpo_dropout_off_but_train_mode_kept_for_gradient_checkpointing(tok):
    policy = tiny_llama(tok, attention_dropout=0.5)
    policy.activation_checkpointing_enable()  # HF 5 name of gradient_checkpointing_enable
    policy.train()
    attn = policy.model.layers[0].self_attn
    calls = []
    attn.register_forward_hook(lambda *a: calls.append(1))
    cfg = DPOConfig(lr=1e-3, epochs=1, batch_size=len(PAIRS))
    hist = train_dpo(policy, tok, PAIRS, cfg, progress=False)
    # With attention dropout active, h at step 0 would be noise, not 0.
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # Reference forward + training forward + the checkpointed recompute during backward: the
    # trainer kept train() mode, so gradient checkpointing was really used.
    assert len(calls) == 3
    assert policy.training and attn.attention_dropout == 0.5  # restored


def test_dpo_uses_explicit_ref_model(tok):
    policy = tiny_llama(tok, seed=0)
    ref = tiny_llama(tok, seed=1)
    cfg = DPOConfig(lr=1e-3, epochs=1, batch_size=len(PAIRS))
    rc, rr = reference_logps(policy, tok, PAIRS, cfg, ref_model=ref)
    ec, er = pair_logps(ref, tok, PAIRS)
    torch.testing.assert_close(rc, ec, rtol=0, atol=1e-5)
    torch.testing.assert_close(rr, er, rtol=0, atol=1e-5)
    pc, pr = pair_logps(policy, tok, PAIRS)
    hist = train_dpo(policy, tok, PAIRS, cfg, ref_model=ref, progress=False)
    assert hist[0]["chosen_rewards"] == pytest.approx(0.1 * (pc - ec).mean().item(), abs=1e-5)
    assert hist[0]["rejected_rewards"] == pytest.approx(0.1 * (pr - er).mean().item(), abs=1e-5)


def test_ipo_runs_and_decreases_loss(tok):
    policy = tiny_llama(tok)
    cfg = DPOConfig(beta=0.5, loss_type="ipo", lr=3e-3, epochs=8, batch_size=4, max_length=64)
    hist = train_dpo(policy, tok, PAIRS, cfg, progress=False)
    assert all(math.isfinite(h["loss"]) for h in hist)
    # h = 0 at step 0, so the IPO loss is (1 / (2 beta))^2 = 1.
    assert hist[0]["loss"] == pytest.approx(1.0, abs=1e-4)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]


def test_dpo_with_lora_reference_is_disabled_adapter(tok):
    peft = pytest.importorskip("peft")
    base_twin = tiny_llama(tok, seed=0).eval()  # identical weights, never wrapped
    policy = peft.get_peft_model(
        tiny_llama(tok, seed=0),
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"]),
    )
    # Make the adapter non-trivial (lora_B starts at 0) so "adapter disabled" differs from the policy.
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    assert base_before and lora_before

    cfg = DPOConfig(beta=0.1, lr=3e-3, epochs=4, batch_size=len(PAIRS), max_length=64)
    rc, rr = reference_logps(policy, tok, PAIRS, cfg)
    bc, br = pair_logps(base_twin, tok, PAIRS)
    torch.testing.assert_close(rc, bc, rtol=0, atol=1e-5)
    torch.testing.assert_close(rr, br, rtol=0, atol=1e-5)
    pc, pr = pair_logps(policy, tok, PAIRS)
    assert (pc - bc).abs().max() > 1e-2  # the adapter matters

    hist = train_dpo(policy, tok, PAIRS, cfg, progress=False)
    # Step 0 covers all pairs: its rewards are beta * (adapter-on - base) log-probs, exactly –
    # which also shows LoRA dropout was off during the training forward.
    assert hist[0]["chosen_rewards"] == pytest.approx(0.1 * (pc - bc).mean().item(), abs=1e-5)
    assert hist[0]["rejected_rewards"] == pytest.approx(0.1 * (pr - br).mean().item(), abs=1e-5)
    for n, p in policy.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), f"base weight {n} changed"
    assert any(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters() if n in lora_before)
    c1, r1 = pair_logps(policy, tok, PAIRS)
    assert (c1 - r1).mean() > (pc - pr).mean()


# ----------------------------------------------------------------------------- ORPO


def orpo_full_loss(model, tok, pairs, beta):
    c, r = pair_logps(model, tok, pairs, average=True)
    loss = (-c + orpo_odds_ratio_loss(c, r, beta=beta)).mean().item()
    return loss, (log_odds(c) - log_odds(r)).mean().item()


def test_orpo_lowers_loss_and_raises_log_odds(tok, tmp_path):
    policy = tiny_llama(tok)
    loss0, lo0 = orpo_full_loss(policy, tok, PAIRS, 0.5)
    cfg = ORPOConfig(beta=0.5, lr=3e-3, epochs=6, batch_size=2, max_length=64, seed=0)
    hist = train_orpo(policy, tok, PAIRS, cfg, out_dir=tmp_path / "orpo", progress=False)
    assert len(hist) == 12
    assert {"loss", "nll", "or_loss", "log_odds", "log_odds_accuracy"} <= set(hist[0])
    for h in hist:
        assert h["loss"] == pytest.approx(h["nll"] + h["or_loss"], rel=1e-5)
    loss1, lo1 = orpo_full_loss(policy, tok, PAIRS, 0.5)
    assert loss1 < loss0 - 0.5, (loss0, loss1)
    assert lo1 > lo0, (lo0, lo1)
    assert (tmp_path / "orpo" / "config.json").exists()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: DPOConfig(beta=0), "beta"),
        (lambda: DPOConfig(label_smoothing=0.5), "label_smoothing"),
        (lambda: DPOConfig(loss_type="hinge"), "loss_type"),
        (lambda: DPOConfig(loss_type="ipo", label_smoothing=0.1), "label_smoothing"),
        (lambda: DPOConfig(lr=-1.0), "lr"),
        (lambda: DPOConfig(batch_size=0), "batch_size"),
        (lambda: DPOConfig(grad_clip=0.0), "grad_clip"),
        (lambda: ORPOConfig(beta=-1), "beta"),
        (lambda: ORPOConfig(epochs=0), "epochs"),
        (lambda: ORPOConfig(max_length=1), "max_length"),
    ],
)
def test_bad_configs_raise(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_bad_pairs_raise(tok):
    model = tiny_llama(tok)
    with pytest.raises(ValueError, match="empty"):
        train_dpo(model, tok, [], DPOConfig(), progress=False)
    with pytest.raises(ValueError, match="rejected"):
        train_orpo(model, tok, [{"prompt": "a", "chosen": "b"}], ORPOConfig(), progress=False)
    with pytest.raises(ValueError, match="chosen"):
        train_dpo(model, tok, [{"prompt": "a", "chosen": 3, "rejected": "c"}], DPOConfig(), progress=False)


def test_tokenize_pairs_adds_bos_only_when_asked():
    from ppolab.models import build_tokenizer

    t = build_tokenizer(vocab_size=300)
    assert t.bos_token_id is not None
    plain = tokenize_pairs(t, ["hello"], [" a"], [" b"], max_length=32)
    with_bos = tokenize_pairs(t, ["hello"], [" a"], [" b"], max_length=32, add_bos=True)
    p_ids = t("hello", add_special_tokens=False)["input_ids"]
    row = plain["input_ids"][0][plain["attention_mask"][0].bool()].tolist()
    assert row[: len(p_ids)] == p_ids  # as SFT and PPO see the prompt
    row_bos = with_bos["input_ids"][0][with_bos["attention_mask"][0].bool()].tolist()
    assert row_bos == [t.bos_token_id] + row


# ----------------------------------------------------------------------------- validation split, best/


def test_split_pairs_holds_out_whole_prompts():
    from ppolab.preference.loop import split_pairs

    pairs = PAIRS + [dict(PAIRS[0], chosen=" other")]  # two pairs share the first prompt
    train, valid = split_pairs(pairs, 0.5, seed=0)
    assert len(train) + len(valid) == len(pairs) and valid and train
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in valid}
    assert len({p["prompt"] for p in valid}) == 2  # ceil(0.5 * 4 prompts)
    assert split_pairs(pairs, 0.5, seed=0) == (train, valid)  # seeded
    assert split_pairs(pairs, 0.0, seed=0) == (pairs, [])
    with pytest.raises(ValueError, match="2 distinct prompts"):
        split_pairs(PAIRS[:1], 0.5, seed=0)


@pytest.mark.parametrize("trainer", ["dpo", "orpo"])
def test_validation_and_best_checkpoint(tok, tmp_path, trainer):
    policy = tiny_llama(tok)
    valid = PAIRS[2:]
    out = tmp_path / trainer
    if trainer == "dpo":
        cfg = DPOConfig(beta=0.1, lr=3e-3, epochs=3, batch_size=2, max_length=64)
        hist = train_dpo(policy, tok, PAIRS[:2], cfg, out_dir=out, progress=False, valid_pairs=valid)
    else:
        cfg = ORPOConfig(beta=0.5, lr=3e-3, epochs=3, batch_size=2, max_length=64)
        hist = train_orpo(policy, tok, PAIRS[:2], cfg, out_dir=out, progress=False, valid_pairs=valid)
    assert len(hist) == 3  # one step per epoch: every record closes an epoch
    losses = [h["valid_loss"] for h in hist]
    assert all(math.isfinite(v) and 0 <= h["valid_accuracy"] <= 1 for v, h in zip(losses, hist))
    if trainer == "dpo":  # the reference is the initial policy: before any update h = 0, after it not
        assert losses[0] != pytest.approx(math.log(2), abs=1e-6)
    best_epoch = min(range(3), key=losses.__getitem__)
    log = json.loads((out / "best" / "training_log.json").read_text())
    assert log["trainer"] == trainer and log["history"][-1]["epoch"] == best_epoch
    assert log["history"][-1]["valid_loss"] == pytest.approx(min(losses))
    assert (out / "config.json").is_file() and (out / "best" / "config.json").is_file()
    final = json.loads((out / "training_log.json").read_text())
    assert len(final["history"]) == 3 and final["config"]["save_best"] is True
    # The best model is the one of that epoch: its validation loss is what was recorded.
    best_model = LlamaForCausalLM.from_pretrained(out / "best")
    if trainer == "orpo":
        assert orpo_full_loss(best_model, tok, valid, 0.5)[0] == pytest.approx(min(losses), abs=1e-4)


def test_valid_fraction_holds_out_pairs(tok):
    hist = train_orpo(tiny_llama(tok), tok, PAIRS, ORPOConfig(epochs=1, batch_size=8, valid_fraction=0.25),
                      progress=False)
    assert len(hist) == 1 and "valid_loss" in hist[0]
    hist = train_orpo(tiny_llama(tok), tok, PAIRS, ORPOConfig(epochs=1, batch_size=8), progress=False)
    assert "valid_loss" not in hist[0]

import copy

import pytest
import torch
from torch import nn

from ppolab.config import ModelConfig
from ppolab.models import Reference, RewardModel, ValueModel, build_tokenizer, load_tokenizer
from tests.helpers import tiny_policy, tiny_tokenizer


def test_tokenizer_round_trips_arabic_and_keeps_left_padding(tmp_path):
    tok = build_tokenizer(["مرحبا بالعالم", "Bonjour le monde", "hello world"], vocab_size=300)
    text = "مرحبا، كيف حالك؟ Ça va ?"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token_id != tok.eos_token_id
    tok.save_pretrained(tmp_path)
    tok2 = load_tokenizer(str(tmp_path))
    assert tok2.padding_side == "left"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_tiny_models_have_no_dropout_and_are_seeded(arch):
    a, b = tiny_policy(arch, seed=3), tiny_policy(arch, seed=3)
    assert all(m.p == 0 for m in a.modules() if isinstance(m, nn.Dropout))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_lora_reference_is_the_base_without_a_copy():
    policy = tiny_policy(lora=True)
    ref = Reference(policy)
    assert ref.shares_policy_weights and ref.model is None
    ids = torch.tensor([[5, 6, 7, 8]])
    base_logits = ref(input_ids=ids).logits
    # Make the adapter matter, then check the reference still equals the base model exactly.
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    assert not torch.allclose(policy(input_ids=ids).logits, base_logits)
    assert torch.equal(ref(input_ids=ids).logits, base_logits)


def test_full_reference_is_a_frozen_copy():
    policy = tiny_policy()
    ref = Reference(policy)
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(ref.model.parameters(), policy.parameters()))


def _batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_reward_scores_last_token_and_ignore_padding():
    tok = tiny_tokenizer()
    rm = RewardModel.from_causal_lm(tiny_policy(), tok, head_hidden=16)
    texts = ["a short one", "a much longer sentence with many tokens in it"]
    ids, mask = _batch(tok, texts)
    batched = rm.score_ids(ids, mask)
    for i, t in enumerate(texts):
        single_ids, single_mask = _batch(tok, [t])
        assert torch.allclose(rm.score_ids(single_ids, single_mask)[0], batched[i], atol=1e-5)


def test_reward_model_save_load_and_normalisation(tmp_path):
    tok = tiny_tokenizer()
    rm = RewardModel.from_causal_lm(tiny_policy(), tok, head_names=("adequacy", "fluency"), head_weights=[3, 1])
    rm.set_normalization(0.5, 2.0)
    rm.save(tmp_path / "rm")
    rm2 = RewardModel.load(tmp_path / "rm")
    assert rm2.head_names == ["adequacy", "fluency"]
    s1 = rm.score(["x"], ["y z"])
    assert torch.allclose(s1, rm2.score(["x"], ["y z"]), atol=1e-6)
    raw = rm.score_last(*_batch(tok, ["xy z" + tok.eos_token]))
    assert torch.allclose(s1, (raw - 0.5) / 2.0, atol=1e-6)
    with pytest.raises(ValueError, match="std"):
        rm.set_normalization(0.0, 0.0)


def test_reward_model_loads_a_sequence_classification_checkpoint(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ppolab.models import tiny_lm_config

    tok = tiny_tokenizer()
    cfg = tiny_lm_config(ModelConfig(arch="llama", hidden_size=32, n_heads=4, intermediate_size=64), tok)
    cfg.num_labels = 1
    seq = AutoModelForSequenceClassification.from_config(cfg)
    seq.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm = RewardModel.load(tmp_path)
    ids, mask = _batch(tok, ["hello there", "hi"])
    expected = seq(input_ids=ids, attention_mask=mask,
                   position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, 0]
    assert torch.allclose(rm.score_ids(ids, mask), expected, atol=1e-5)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        RewardModel.load(tmp_path / "nope")


def test_value_model_from_reward_model_starts_equal():
    tok = tiny_tokenizer()
    rm = RewardModel.from_causal_lm(tiny_policy(), tok)
    value = ValueModel.from_reward_model(rm)
    ids, mask = _batch(tok, ["one two three"])
    assert torch.allclose(value(ids, mask)[:, -1], rm.score_last(ids, mask), atol=1e-6)
    assert all(p.requires_grad for p in value.parameters())


@pytest.mark.parametrize("lora", [False, True])
def test_value_model_from_policy_keeps_what_trains(lora):
    policy = tiny_policy("llama", lora=lora)
    value = ValueModel.from_policy(policy)
    trainable = {n for n, p in value.named_parameters() if p.requires_grad}
    assert any(n.startswith("head") for n in trainable)
    trunk = [n for n in trainable if not n.startswith("head")]
    if lora:  # the adapter's copy and the head train; the base stays frozen
        assert trunk and all("lora_" in n for n in trunk)
    else:
        assert len(trunk) == sum(1 for _ in value.backbone.parameters())
    # A copy: training it leaves the policy alone.
    before = [p.clone() for p in policy.parameters()]
    for p in value.parameters():
        if p.requires_grad:
            p.data.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_left_pad_matches_a_loop():
    from ppolab.models.builders import left_pad

    rows = [[5, 6, 7], [8], [9, 10]]
    ids, mask = left_pad(rows, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from ppolab.config import GenerationConfig
from ppolab.models import Reference, ValueModel
from ppolab.token_attribution import SequenceGenerator, response_mask
from tests.helpers import tiny_policy, tiny_tokenizer

PROMPTS = ["Translate English to Arabic: hello", "Good morning", "Where is the nearest pharmacy? I need help"]


def _loop_mask(row, eos):
    out, seen = [], False
    for tok in row:
        out.append(0 if seen else 1)
        seen = seen or tok == eos
    return out


@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=10), min_size=1, max_size=5).map(
    lambda rows: [r + [0] * (10 - len(r)) for r in rows]))
def test_response_mask_matches_loop(rows):
    ids = torch.tensor(rows)
    mask, has_eos = response_mask(ids, eos_token_id=2)
    assert mask.tolist() == [_loop_mask(r, 2) for r in rows]
    assert has_eos.tolist() == [2 in r for r in rows]


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def rollout_setup(request):
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    policy = tiny_policy(request.param)
    value = ValueModel.from_policy(policy)
    gen = SequenceGenerator(policy, tok, GenerationConfig(max_new_tokens=10, temperature=0.7), Reference(policy), value)
    return tok, policy, value, gen, gen.generate(PROMPTS)


def test_rollout_logprobs_equal_an_unpadded_forward_per_row(rollout_setup):
    tok, policy, value, gen, r = rollout_setup
    for i in range(len(PROMPTS)):
        prompt = r.prompt_ids[i][r.prompt_mask[i].bool()]
        n = int(r.mask[i].sum())
        ids = torch.cat([prompt, r.response_ids[i, :n]]).unsqueeze(0)
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0].float() / 0.7
            v = value(ids, torch.ones_like(ids))[0]
        expected = F.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, ids[0, len(prompt):, None])[:, 0]
        assert torch.allclose(r.logprobs[i, :n], expected, atol=1e-4)
        assert torch.allclose(r.ref_logprobs[i, :n], expected, atol=1e-4)  # ref == policy before training
        assert torch.allclose(r.values[i, :n], v[len(prompt) - 1 : -1], atol=1e-4)


def test_nothing_after_eos_is_counted(rollout_setup):
    tok, *_, r = rollout_setup
    for i in range(len(r)):
        n = int(r.mask[i].sum())
        row = r.response_ids[i].tolist()
        assert r.mask[i].tolist() == [1] * n + [0] * (len(row) - n)
        assert all(t == tok.pad_token_id for t in row[n:])
        assert tok.eos_token_id not in row[: n - 1]
        assert bool(r.has_eos[i]) == (row[n - 1] == tok.eos_token_id)


def test_state_action_view_reads_the_tensors(rollout_setup):
    tok, *_, r = rollout_setup
    steps = r.state_actions(1, tok)
    assert len(steps) == int(r.mask[1].sum())
    assert steps[0].state_text == PROMPTS[1]
    for s in steps:
        assert s.action_id == int(r.response_ids[1, s.t])
        assert s.kl == pytest.approx(s.logprob - s.ref_logprob)
    assert steps[-1].state_text.startswith(PROMPTS[1])


def test_left_padding_does_not_change_greedy_generation():
    tok = tiny_tokenizer()
    policy = tiny_policy("gemma2")
    gen = SequenceGenerator(policy, tok, GenerationConfig(max_new_tokens=8, top_k=1))
    batch = gen.generate(PROMPTS)
    for i, p in enumerate(PROMPTS):
        alone = gen.generate([p])
        n = int(alone.mask[0].sum())
        assert batch.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist()
        assert torch.allclose(batch.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-4)


def test_no_early_stop_samples_exactly_max_new_tokens():
    tok = tiny_tokenizer()
    gen = SequenceGenerator(tiny_policy(), tok, GenerationConfig(max_new_tokens=7, stop_at_eos=False))
    r = gen.generate(PROMPTS)
    assert r.response_ids.shape == (3, 7) and bool(r.mask.all())


@pytest.mark.parametrize("prompts,match", [
    ([], "non-empty list"),
    ("a string", "non-empty list"),
    (["ok", "  "], r"prompts\[1\]: empty"),
    (["x " * 400], r"prompts\[0\]: .*max_prompt_length"),
])
def test_bad_prompts_are_clear_errors(prompts, match):
    gen = SequenceGenerator(tiny_policy(), tiny_tokenizer(), GenerationConfig(max_prompt_length=64))
    with pytest.raises(ValueError, match=match):
        gen.generate(prompts)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.6)])
def test_logprobs_taken_at_sampling_equal_a_recomputing_forward(top_k, top_p):
    """The sampling loop's log-probs are those one more policy forward would give (untruncated, at T)."""
    torch.manual_seed(1)
    tok = tiny_tokenizer()
    policy = tiny_policy("llama")
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.8, top_k=top_k, top_p=top_p)
    gen = SequenceGenerator(policy, tok, cfg, Reference(policy))
    r = gen.generate(PROMPTS)
    assert "policy_forward" not in gen.timings  # fp32: no extra forward
    again = gen.score(list(PROMPTS), r.prompt_ids, r.prompt_mask, r.response_ids)  # recomputes
    m = r.mask.bool()
    assert torch.allclose(r.logprobs[m], again.logprobs[m], atol=1e-5)
    assert bool((r.logprobs[~m] == 0).all())


@pytest.mark.parametrize("setting,dtype,recomputes", [
    (None, torch.float32, False), (None, torch.bfloat16, True), (False, torch.float32, True),
    (True, torch.bfloat16, False),
])
def test_logprobs_from_sampling_setting(setting, dtype, recomputes):
    tok = tiny_tokenizer()
    policy = tiny_policy("llama").to(dtype)
    gen = SequenceGenerator(policy, tok, GenerationConfig(max_new_tokens=4, logprobs_from_sampling=setting))
    r = gen.generate(PROMPTS[:2])
    assert ("policy_forward" in gen.timings) == recomputes
    assert r.logprobs.dtype == torch.float32 and bool(torch.isfinite(r.logprobs).all())

"""One trunk pass for log-probs and values, chunked log-softmax: equal to the slow obvious versions."""
import pytest
import torch
import torch.nn.functional as F

import ppolab.token_attribution.logprobs as lp_mod
from ppolab.config import GenerationConfig
from ppolab.models import Reference, ValueModel, base_trunk, value_head_on_policy
from ppolab.models.builders import position_ids_from_mask
from ppolab.models.vocab_trim import trim_output_vocabulary
from ppolab.ppo.losses import clipped_policy_loss, clipped_value_loss
from ppolab.token_attribution import SequenceGenerator, logprobs_and_values, response_logprobs
from ppolab.token_attribution.logprobs import output_head, token_logprobs
from tests.helpers import tiny_policy, tiny_tokenizer

T = 5
# gemma3: Gemma 3's text model (the real target's architecture), a sliding-window and a full layer.
SETUPS = [(arch, lora) for arch in ("llama", "gemma2", "gemma3") for lora in (False, True)]


def make_policy(arch, lora=False):
    """`tiny_policy`, plus a tiny Gemma 3 text model (not among the library's tiny builders)."""
    if arch != "gemma3":
        return tiny_policy(arch, lora=lora)
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from ppolab.config import ModelConfig
    from ppolab.models import disable_dropout, wrap_lora

    tok = tiny_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           bos_token_id=tok.bos_token_id, attn_implementation="eager")
    torch.manual_seed(0)
    model = disable_dropout(AutoModelForCausalLM.from_config(cfg))
    return wrap_lora(model, ModelConfig(lora=True)) if lora else model


def batch(seed=0, B=3, P=4, V=512):
    """Left-padded prompts, then responses with right padding: `[B, P + T]` ids and mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, P + T), generator=g)
    mask = torch.ones(B, P + T, dtype=torch.long)
    mask[1, :2] = 0  # a shorter prompt
    mask[2, -2:] = 0  # a response that ended early
    return ids, mask


def slow_logprobs(model, ids, mask, n, temperature=1.0):
    """The obvious version: every position's full logits, log_softmax, gather; entropy from p."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp = F.log_softmax(logits[:, -n - 1 : -1].float() / temperature, -1)
    return logp.gather(-1, ids[:, -n:, None])[..., 0], -(logp.exp() * logp).sum(-1)


def nonzero_value_head(value, seed=1):
    """A fresh shared head starts at V = 0 (no gradient reaches the trunk through it): randomise it."""
    torch.manual_seed(seed)
    for p in value.head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return value


def grads(params):
    return [p.grad.clone() for p in params]


def assert_logprobs_match_slow(policy, params, ids, mask):
    """Chunked log-probs and entropy, and their gradients, equal the full log-softmax version."""
    w = torch.randn(3, T)  # arbitrary weights so every position's gradient counts
    got_lp, got_ent = response_logprobs(policy, ids, mask, T, 0.7, with_entropy=True)
    ((got_lp * w).sum() + (got_ent * w).sum()).backward()
    got_grads = grads(params)
    policy.zero_grad()
    exp_lp, exp_ent = slow_logprobs(policy, ids, mask, T, 0.7)
    ((exp_lp * w).sum() + (exp_ent * w).sum()).backward()
    assert torch.allclose(got_lp, exp_lp, atol=1e-5) and torch.allclose(got_ent, exp_ent, atol=1e-5)
    for g, e in zip(got_grads, grads(params)):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,lora", SETUPS)
@pytest.mark.parametrize("trim", [False, True])
def test_split_head_gives_the_models_own_logits(arch, lora, trim):
    policy = make_policy(arch, lora)
    if trim:
        trim_output_vocabulary(policy.get_base_model() if lora else policy, range(0, 512, 3))
    ids, mask = batch()
    head = output_head(policy)
    assert head is not None
    with torch.no_grad():
        expected = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        hidden = base_trunk(policy)(input_ids=ids, attention_mask=mask,
                                    position_ids=position_ids_from_mask(mask)).last_hidden_state
        assert torch.allclose(head(hidden), expected, atol=1e-5)


@pytest.mark.parametrize("keep_bytes", [0, 1 << 40])  # backward recomputes the logits / reuses the forward's
@pytest.mark.parametrize("chunk_rows", [1, 4, 10_000])  # one row, a ragged last chunk, one chunk
@pytest.mark.parametrize("arch,lora", SETUPS)
def test_chunked_logprobs_and_entropy_equal_full_log_softmax_with_gradients(monkeypatch, arch, lora, chunk_rows,
                                                                             keep_bytes):
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 512 * chunk_rows)
    monkeypatch.setattr(lp_mod, "KEEP_LOGITS_BYTES", keep_bytes)
    policy = make_policy(arch, lora)
    params = [p for p in policy.parameters() if p.requires_grad]
    ids, mask = batch()
    assert_logprobs_match_slow(policy, params, ids, mask)


@pytest.mark.parametrize("chunk_rows", [1, 4, 10_000])
def test_chunked_logprobs_of_given_logits(monkeypatch, chunk_rows):
    """The path for models whose head we don't split: logits in, chunked log-softmax."""
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 50 * chunk_rows)
    logits = (torch.randn(3, 7, 50) * 3).requires_grad_()
    targets = torch.randint(0, 50, (3, 7))
    lp, ent = token_logprobs(logits, targets, 1.3, with_entropy=True)
    (lp.sum() + ent.sum()).backward()
    g = logits.grad.clone()
    logits.grad = None
    logp = F.log_softmax(logits / 1.3, -1)
    exp_lp, exp_ent = logp.gather(-1, targets[..., None])[..., 0], -(logp.exp() * logp).sum(-1)
    (exp_lp.sum() + exp_ent.sum()).backward()
    assert torch.allclose(lp, exp_lp, atol=1e-6) and torch.allclose(ent, exp_ent, atol=1e-5)
    assert torch.allclose(g, logits.grad, atol=1e-6)


@pytest.mark.parametrize("keep_bytes", [0, 1 << 40])
@pytest.mark.parametrize("chunk_rows", [4, 10_000])
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_trimmed_head_logprobs_equal_the_full_log_softmax(monkeypatch, arch, chunk_rows, keep_bytes):
    """A TrimmedLMHead is read on its kept columns (llama, gemma3) or whole (gemma2's softcap maps
    the -1e4 fill to -30, a real logit); either way equal to log_softmax over the model's V logits,
    for kept and dropped targets, with gradients."""
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 512 * chunk_rows)
    monkeypatch.setattr(lp_mod, "KEEP_LOGITS_BYTES", keep_bytes)
    policy = make_policy(arch, lora=True)
    trim_output_vocabulary(policy.get_base_model(), [i for i in range(512) if i % 4 != 1])
    head, keep_ids, V = lp_mod.logprob_head(policy)
    assert V == 512 and (keep_ids is None) == (arch == "gemma2")
    params = [p for p in policy.parameters() if p.requires_grad]
    ids, mask = batch()
    ids[:, -T:] = ids[:, -T:] // 4 * 4 + torch.tensor([0, 1, 2, 3, 1])  # targets 1 mod 4 were dropped
    assert_logprobs_match_slow(policy, params, ids, mask)


@pytest.mark.parametrize("keep_bytes", [0, 1 << 40])
def test_a_trainable_head_on_frozen_features_gets_its_gradient(monkeypatch, keep_bytes):
    """Only the head trains (the input needs no gradient): its gradient still comes back."""
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 40 * 3)
    monkeypatch.setattr(lp_mod, "KEEP_LOGITS_BYTES", keep_bytes)
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=False)
    x, targets = torch.randn(2, 5, 8), torch.randint(0, 40, (2, 5))
    lp, ent = token_logprobs(x, targets, 0.9, head, with_entropy=True, vocab_size=40)
    (lp.sum() + 0.5 * ent.sum()).backward()
    got = head.weight.grad.clone()
    head.weight.grad = None
    logp = F.log_softmax(head(x) / 0.9, -1)
    (logp.gather(-1, targets[..., None]).sum() - 0.5 * (logp.exp() * logp).sum()).backward()
    assert torch.allclose(got, head.weight.grad, atol=1e-6)


def test_reference_logprobs_are_the_adapter_off_base():
    policy = tiny_policy(lora=True)
    with torch.no_grad():  # move the adapter so that policy and base differ
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    base = tiny_policy(lora=False)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.allclose(response_logprobs(Reference(policy), ids, mask, T), slow_logprobs(base, ids, mask, T)[0],
                              atol=1e-5)
        assert not torch.allclose(response_logprobs(policy, ids, mask, T), slow_logprobs(base, ids, mask, T)[0],
                                  atol=1e-3)


def ppo_loss(logprobs, entropy, values, mask, seed=2):
    """A PPO minibatch loss with fixed rollout-time quantities."""
    g = torch.Generator().manual_seed(seed)
    old_lp = logprobs.detach() + 0.1 * torch.randn(logprobs.shape, generator=g)
    adv, old_v, ret = (torch.randn(logprobs.shape, generator=g) for _ in range(3))
    pg, _ = clipped_policy_loss(logprobs, old_lp, adv, mask, 0.2)
    vf, _ = clipped_value_loss(values, old_v, ret, mask, 0.2)
    return pg + 0.5 * vf - 0.01 * (entropy * mask).sum() / mask.sum()


@pytest.mark.parametrize("chunk_rows", [4, 10_000])
@pytest.mark.parametrize("arch,lora", SETUPS)
def test_fused_pass_equals_two_passes_in_losses_and_gradients(monkeypatch, arch, lora, chunk_rows):
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 512 * chunk_rows)
    monkeypatch.setattr(lp_mod, "KEEP_LOGITS_BYTES", 1 << 40 if chunk_rows == 4 else 0)
    policy = make_policy(arch, lora)
    value = nonzero_value_head(value_head_on_policy(policy))
    params = [p for p in policy.parameters() if p.requires_grad] + list(value.head.parameters())
    ids, mask = batch()
    rmask = mask[:, -T:].float()
    calls = []
    hook = base_trunk(policy).register_forward_hook(lambda *a: calls.append(1))

    lp, ent, v = logprobs_and_values(policy, value, ids, mask, T, 0.7, with_entropy=True)
    loss = ppo_loss(lp, ent, v, rmask)
    loss.backward()
    assert len(calls) == 1  # one trunk forward for both heads
    fused_grads = grads(params)
    for p in params:
        p.grad = None

    exp_lp, exp_ent = slow_logprobs(policy, ids, mask, T, 0.7)
    exp_v = value(ids, mask)[:, -T - 1 : -1]
    exp_loss = ppo_loss(exp_lp, exp_ent, exp_v, rmask)
    exp_loss.backward()
    hook.remove()
    assert len(calls) == 3

    assert torch.allclose(lp, exp_lp, atol=1e-5) and torch.allclose(ent, exp_ent, atol=1e-5)
    assert torch.allclose(v, exp_v, atol=1e-5)
    assert torch.allclose(loss, exp_loss, atol=1e-6)
    assert any(float(g.abs().max()) > 0 for g in fused_grads)
    for g, e in zip(fused_grads, grads(params)):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)


def test_a_separate_value_model_takes_two_passes():
    policy = tiny_policy()
    value = ValueModel.from_policy(policy)
    ids, mask = batch()
    with torch.no_grad():
        lp, v = logprobs_and_values(policy, value, ids, mask, T)
        assert torch.allclose(lp, slow_logprobs(policy, ids, mask, T)[0], atol=1e-5)
        assert torch.allclose(v, value(ids, mask)[:, -T - 1 : -1])


PROMPTS = ["Translate English to Arabic: hello", "Good morning", "Where is the nearest pharmacy? I need help"]


@pytest.mark.parametrize("from_sampling", [True, False])
@pytest.mark.parametrize("arch,lora", SETUPS)
def test_rollout_values_come_without_a_value_pass(arch, lora, from_sampling):
    """Trunk calls in a rollout: one per sampled token, one for the reference when it is the
    adapter-off policy, and one for policy + value when the log-probs are recomputed; never one
    for the values alone. The values equal the value model's own forward."""
    torch.manual_seed(0)
    policy = make_policy(arch, lora)
    value = nonzero_value_head(value_head_on_policy(policy))
    n_new = 6
    gen = SequenceGenerator(policy, tiny_tokenizer(),
                            GenerationConfig(max_new_tokens=n_new, temperature=0.8, stop_at_eos=False,
                                             logprobs_from_sampling=from_sampling),
                            Reference(policy), value)
    calls = []
    hook = base_trunk(policy).register_forward_hook(lambda *a: calls.append(1))
    r = gen.generate(PROMPTS)
    hook.remove()
    assert r.response_ids.shape[1] == n_new
    assert len(calls) == n_new + int(lora) + int(not from_sampling)
    assert "value_forward" not in gen.timings
    with torch.no_grad():
        exp_v = value(r.input_ids, r.attention_mask)[:, -n_new - 1 : -1]
        exp_lp = slow_logprobs(policy, r.input_ids, r.attention_mask, n_new, 0.8)[0]
    assert torch.allclose(r.values, exp_v, atol=1e-5)
    assert torch.allclose(r.logprobs, exp_lp, atol=1e-5)


def arabic_fraction(prompts, responses):
    return [sum("\u0600" <= ch <= "\u06ff" for ch in r) / max(len(r), 1) for r in responses]


def shared_trunk_trainer(arch, lora, **ppo):
    from ppolab.config import PPOConfig
    from ppolab.ppo.trainer import PPOTrainer

    torch.manual_seed(0)
    policy = make_policy(arch, lora)
    value = nonzero_value_head(value_head_on_policy(policy))
    cfg = PPOConfig(**{"batch_size": 6, "minibatch_size": 6, "micro_batch_size": 3, "ppo_epochs": 2, "lr": 3e-3,
                       "kl_coef": 0.01, "entropy_coef": 0.01, **ppo})
    return PPOTrainer(cfg, policy, None, value, arabic_fraction, tiny_tokenizer(),
                      GenerationConfig(max_new_tokens=6, temperature=0.9))


@pytest.mark.parametrize("arch,lora", SETUPS)
def test_update_runs_the_trunk_once_per_micro_batch(arch, lora):
    t = shared_trunk_trainer(arch, lora, minibatch_size=3, micro_batch_size=1)
    experience = t.make_experience(t.rollout(PROMPTS * 2))
    calls = []
    hook = base_trunk(t.policy).register_forward_hook(lambda *a: calls.append(1))
    t.update(experience)
    hook.remove()
    assert len(calls) == 2 * 2 * 3  # epochs x minibatches x micro-batches


@pytest.mark.parametrize("arch,lora", SETUPS)
def test_ppo_step_with_the_fused_pass_equals_the_two_pass_step(monkeypatch, arch, lora):
    """The whole step, fused (rollout and update) against the model's own forwards and a value pass."""
    fused = shared_trunk_trainer(arch, lora)
    torch.manual_seed(5)
    got = fused.ppo_step(PROMPTS * 2)
    monkeypatch.setattr(lp_mod, "PLAIN_HEAD_MODEL_TYPES", frozenset())  # no split head: the two-pass version
    two = shared_trunk_trainer(arch, lora)
    torch.manual_seed(5)
    exp = two.ppo_step(PROMPTS * 2)
    assert "value_forward" in exp["timings"] and "value_forward" not in got["timings"]
    assert got["generated_texts"] == exp["generated_texts"]
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "grad_norm", "kl"):
        assert got[k] == pytest.approx(exp[k], rel=1e-4, abs=1e-6), k
    for (n, p), q in zip(fused.policy.named_parameters(), two.policy.parameters()):
        assert torch.allclose(p, q, atol=1e-5), n
    for p, q in zip(fused.value.head.parameters(), two.value.head.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


@pytest.mark.parametrize("shared_value", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_a_trimmed_policy_samples_kept_tokens_with_the_policys_logprobs(arch, shared_value):
    """Sampling reads a trimmed head on its kept columns (llama, gemma3): the tokens are kept ids and
    their log-probs are the policy's over all V logits."""
    policy = make_policy(arch, lora=True)
    keep = [i for i in range(512) if i % 4 != 1]
    trim_output_vocabulary(policy.get_base_model(), keep)
    value = nonzero_value_head(value_head_on_policy(policy)) if shared_value else None
    gen = SequenceGenerator(policy, tiny_tokenizer(), GenerationConfig(max_new_tokens=8, temperature=1.3,
                                                                       stop_at_eos=False), Reference(policy), value)
    torch.manual_seed(0)
    r = gen.generate(PROMPTS * 4)
    assert set(r.response_ids.flatten().tolist()) <= set(keep)
    assert r.response_ids.unique().numel() > 20  # sampled across the vocabulary, not a few columns
    exp_lp = slow_logprobs(policy, r.input_ids, r.attention_mask, 8, 1.3)[0]
    assert torch.allclose(r.logprobs, exp_lp.detach(), atol=1e-5)
    if value is not None:
        with torch.no_grad():
            assert torch.allclose(r.values, value(r.input_ids, r.attention_mask)[:, -9:-1], atol=1e-5)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.7), (8, 1.0)])
def test_sampling_among_kept_columns_is_the_full_vocabularys_distribution(top_k, top_p):
    """`sample_next_token` over the K kept logits, mapped back to ids, draws what it draws over all V
    logits with the dropped ones at -1e4 (empirical frequencies of 40,000 draws)."""
    from ppolab.models.vocab_trim import EXCLUDED_LOGIT
    from ppolab.token_attribution.generator import sample_next_token

    keep = torch.tensor([0, 2, 3, 5, 8, 9])
    small = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0, 1.5]])
    full = torch.full((1, 10), EXCLUDED_LOGIT).index_copy(-1, keep, small)
    n = 40_000
    torch.manual_seed(0)
    a = keep[sample_next_token(small.expand(n, -1), 0.9, top_k, top_p)]
    b = sample_next_token(full.expand(n, -1), 0.9, top_k, top_p)
    fa, fb = torch.bincount(a, minlength=10) / n, torch.bincount(b, minlength=10) / n
    assert fb[[1, 4, 6, 7]].sum() == 0
    assert torch.allclose(fa, fb, atol=0.01), (fa, fb)


@pytest.mark.parametrize("keep_bytes,calls_per_chunk", [(0, 2), (1 << 40, 1), (40 * 10 * 4 - 1, 2)])
def test_the_backward_reuses_the_forwards_head_output_when_it_fits(monkeypatch, keep_bytes, calls_per_chunk):
    """KEEP_LOGITS_BYTES: within it, the head runs once per chunk for forward + backward (not twice)."""
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 40 * 3)
    monkeypatch.setattr(lp_mod, "KEEP_LOGITS_BYTES", keep_bytes)
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=False)
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 5, 8, requires_grad=True)  # 10 rows of 40 logits: 4 chunks of 3 rows
    targets = torch.randint(0, 40, (2, 5))
    lp = token_logprobs(x, targets, 1.0, head, vocab_size=40)
    lp.sum().backward()
    assert len(calls) == 4 * calls_per_chunk
    expected = torch.func.grad(lambda x: F.log_softmax(head(x), -1).gather(-1, targets[..., None]).sum())(x.detach())
    assert torch.allclose(x.grad, expected, atol=1e-6)

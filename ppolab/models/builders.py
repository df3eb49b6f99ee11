"""Build tiny causal LMs offline from a config, or load real ones with `from_pretrained(path)`."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UserError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, L]` ids and mask, padded on the left to the longest row."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, L - len(r):] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[B, L]` positions that start at 0 on each row's first real token (left padding safe)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


_DROPOUT_NAMES = ("dropout", "pdrop", "drop_prob")  # attribute names that hold a dropout probability


def _is_dropout_name(name: str) -> bool:
    name = name.lower()
    return any(n in name for n in _DROPOUT_NAMES)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Dropout off everywhere: PPO's ratio must compare the same function before and after.

    Three places hold a dropout probability, and all three are zeroed: `nn.Dropout` modules
    (LoRA's `lora_dropout` included), float attributes that modules copied from their config at
    construction (Hugging Face attention layers keep `self.attention_dropout` and pass it to the
    attention kernel in `train()`), and the config fields themselves (for modules built later).
    """
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        for name, value in list(vars(m).items()):
            if isinstance(value, float) and not isinstance(value, bool) and _is_dropout_name(name):
                setattr(m, name, 0.0)
        cfg = getattr(m, "config", None)
        for name, value in list(getattr(cfg, "__dict__", {}).items()):
            if isinstance(value, float) and _is_dropout_name(name):
                setattr(cfg, name, 0.0)
    return model


def tiny_lm_config(cfg: ModelConfig, tokenizer):
    """A transformers config for a tiny model; token ids come from the tokenizer."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.hidden_size // cfg.n_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attention_dropout=0.0,
        tie_word_embeddings=True,
    )
    if cfg.arch == "gemma2":
        from transformers import Gemma2Config

        # Gemma-2 runs eager attention only in transformers 5 (sdpa raises).
        return Gemma2Config(**common, attn_implementation="eager", query_pre_attn_scalar=cfg.hidden_size // cfg.n_heads)
    from transformers import LlamaConfig

    return LlamaConfig(**common, attn_implementation="sdpa")


def build_tiny_causal_lm(cfg: ModelConfig, tokenizer) -> nn.Module:
    """A randomly initialised causal LM (seeded by `cfg.seed`), built with no download."""
    from transformers import AutoModelForCausalLM

    cfg.validate()
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(tiny_lm_config(cfg, tokenizer), dtype=_DTYPES[cfg.dtype])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return disable_dropout(model)


class QuantizationError(UserError):
    """A 4/8-bit setting that cannot run here (bitsandbytes missing, or a full-weight policy)."""


def quantization_device_map():
    """Where bitsandbytes puts a quantized load: the current CUDA device, else the CPU (bitsandbytes
    0.45+ has CPU kernels for 4-bit NF4/FP4 and 8-bit). One device, never "auto": a model split
    across devices by accelerate would not match the trainer's single-device tensors."""
    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}


def quantization_config(cfg: ModelConfig, skip_modules: tuple[str, ...] = ()):
    """`BitsAndBytesConfig` for `cfg.load_in_4bit` / `load_in_8bit`, or None for full precision.

    4-bit: `bnb_4bit_quant_type` ("nf4" or "fp4"), optional double quantisation of the block scales,
    and compute in `cfg.dtype` (the matmuls dequantise a block at a time into it). 8-bit: LLM.int8
    (on the CPU, bitsandbytes casts the matmul inputs to fp16). The output embedding (LM head) stays
    in full precision: bitsandbytes skips it, and the vocabulary trim copies rows out of it.
    `skip_modules` names more modules to keep in full precision (a classifier's `score`).
    """
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise QuantizationError(
            "model.load_in_4bit/load_in_8bit needs bitsandbytes, the 'quant' extra: uv sync --extra quant"
        ) from e
    # Setting the skip list replaces bitsandbytes' default (the output head), so name it again.
    skip = {"llm_int8_skip_modules": ["lm_head", *skip_modules]} if skip_modules else {}
    if cfg.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=_DTYPES[cfg.dtype], **skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, **skip)


def is_quantized(model: nn.Module) -> bool:
    """True when bitsandbytes holds some of the model's weights (4-bit or 8-bit). Looks at the
    layers, not the loader's flags, which a trunk taken out of its CausalLM does not carry."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def _dequantized_weight(m: nn.Module) -> torch.Tensor:
    """A bitsandbytes Linear's weight in full precision (any other module's weight as it is)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    w = m.weight
    if isinstance(m, bnb.nn.Linear4bit):
        return bnbf.dequantize_4bit(w.data, w.quant_state)
    if isinstance(m, bnb.nn.Linear8bitLt):
        return bnbf.int8_vectorwise_dequant(w.data, m.state.SCB if m.state.SCB is not None else w.SCB)
    return w.detach()


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A full-precision copy of a 4/8-bit model, LoRA adapters merged in full precision, for saving.

    Same class as the (base) model, config without `quantization_config`. Why: transformers 5.24
    cannot `save_pretrained` a model it loaded from an already quantized folder, and merging an
    adapter into 4-bit weights would round most of its update away. Load the saved folder with
    `load_in_4bit` again to quantize it (NF4/int8 re-quantize a dequantized weight to the same
    codes; double-quantized scales move by ~0.3%). Each weight is dequantized into its own copy:
    expect one full-precision model of extra memory while it exists.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if is_peft(model) else model
    plain = [p for p in base.parameters() if p.is_floating_point() and p.dim() > 1 and p.dtype != torch.uint8]
    dtype = plain[0].dtype if plain else torch.float32
    state, wrapped = {}, []
    for mname, m in base.named_modules():
        if any(mname.startswith(w + ".") for w in wrapped):
            continue  # the inside of a LoRA wrapper: base_layer, lora_A/B, dropout
        prefix = f"{mname}." if mname else ""
        if isinstance(m, LoraLayer):
            wrapped.append(mname)
            inner = m.get_base_layer()
            w = _dequantized_weight(inner).to(dtype)
            if not m.merged:
                for name in m.active_adapters:
                    if name in m.lora_A:
                        w = w + m.get_delta_weight(name).to(dtype)
            state[prefix + "weight"] = w.detach().clone()
            if getattr(inner, "bias", None) is not None:
                state[prefix + "bias"] = inner.bias.detach().to(dtype).clone()
            continue
        for pname, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            if pname == "weight":
                t = _dequantized_weight(m)
            state[prefix + pname] = t.detach().to(dtype if t.is_floating_point() else t.dtype).clone()
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        out = type(base)(config)
    persistent = set(out.state_dict())
    out.load_state_dict({k: v for k, v in state.items() if k in persistent}, strict=False, assign=True)
    for key in state.keys() - persistent:  # non-persistent buffers (RoPE's inv_freq) that the copy has
        mname, _, bname = key.rpartition(".")
        sub = out.get_submodule(mname)
        if bname in sub._buffers:
            sub._buffers[bname] = state[key]
    if hasattr(out, "tie_weights"):
        out.tie_weights()  # a tied head is one tensor, listed once above
    left = [n for n, t in [*out.named_parameters(), *out.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"dequantized_copy: no weights for {left[:5]}")
    return out


class _Once:
    """A logging filter that lets each distinct message through once."""

    def __init__(self):
        self.seen = set()

    def filter(self, record) -> bool:
        key = record.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _quiet_bitsandbytes_cpu_warnings() -> None:
    # On the CPU, every 8-bit matmul logs that it casts fp32 inputs to fp16 (thousands of lines per
    # PPO step); the cast is documented in docs/SCALING.md, once is enough.
    import logging

    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Once) for f in log.filters):
        log.addFilter(_Once())


def load_causal_lm(path: str, cfg: ModelConfig | None = None) -> nn.Module:
    """Load a real checkpoint from a local folder (nothing is downloaded: HF_HUB_OFFLINE=1)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from .pretrained import resolve_model_path

    cfg = cfg or ModelConfig()
    path = resolve_model_path(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"model checkpoint not found: {path} (ppolab never downloads weights)")
    quant = quantization_config(cfg)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[cfg.dtype], quantization_config=quant,
        device_map=quantization_device_map() if quant is not None else None,
    )
    if quant is not None:
        model = prepare_quantized(model, cfg)
    elif cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return disable_dropout(model)


def prepare_quantized(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """QLoRA's preparation (`peft.prepare_model_for_kbit_training`): every weight frozen (a quantized
    weight cannot take a gradient step; an adapter or a head is what trains), the remaining
    half-precision weights (norms, embeddings) upcast to fp32 for stable training, and, with
    `cfg.gradient_checkpointing`, checkpointing with input gradients enabled so the adapter's
    gradients flow through the recomputed blocks."""
    from peft import prepare_model_for_kbit_training

    _quiet_bitsandbytes_cpu_warnings()
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)


def load_tokenizer(path: str):
    """A checkpoint's tokenizer, left-padding, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    from .pretrained import resolve_model_path

    from .tokenizer import read_prompt_format

    path = resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.ppolab_prompt_format = read_prompt_format(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def wrap_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Add a LoRA adapter; only the adapter trains and the base doubles as the reference."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_policy(cfg: ModelConfig, tokenizer) -> nn.Module:
    """The policy: tiny (offline) or loaded, with LoRA when `cfg.lora`."""
    if (cfg.load_in_4bit or cfg.load_in_8bit) and not cfg.lora:
        raise QuantizationError(
            "model.load_in_4bit/load_in_8bit: a quantized policy trains only through a LoRA adapter; "
            "set model.lora=true (QLoRA) or turn quantisation off"
        )
    if (cfg.load_in_4bit or cfg.load_in_8bit) and not cfg.policy_path:
        raise QuantizationError(
            "model.load_in_4bit/load_in_8bit quantizes a checkpoint as it loads: set model.policy_path "
            "(a tiny model built in memory is never quantized)"
        )
    model = load_causal_lm(cfg.policy_path, cfg) if cfg.policy_path else build_tiny_causal_lm(cfg, tokenizer)
    return wrap_lora(model, cfg) if cfg.lora else model


def is_peft(model: nn.Module) -> bool:
    """True when `model` carries a peft adapter it can switch off (`disable_adapter`, `peft_config`).

    Duck-typed, so any peft wrapper counts; `ppolab.preference.loop.is_peft_model_instance` is the
    strict `isinstance(model, peft.PeftModel)`.
    """
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Reference(nn.Module):
    """The frozen SFT reference.

    With a LoRA policy it is the policy itself with the adapter disabled, so no second copy of the
    weights exists; otherwise it holds a frozen deep copy made when it is created.
    """

    def __init__(self, policy: nn.Module, model: nn.Module | None = None):
        super().__init__()
        self._policy = [policy]  # a list so the policy is not registered as our submodule
        self.shares_policy_weights = model is None and is_peft(policy)
        if self.shares_policy_weights:
            self.model = None
        else:
            self.model = freeze(model if model is not None else copy.deepcopy(policy))

    @property
    def policy(self) -> nn.Module:
        """The policy this reference was made from (with `shares_policy_weights`: whose base it is)."""
        return self._policy[0]

    def forward(self, **kwargs):
        with torch.no_grad():
            if self.shares_policy_weights:
                with self._policy[0].disable_adapter():
                    return self._policy[0](**kwargs)
            return self.model(**kwargs)


def base_trunk(model: nn.Module) -> nn.Module:
    """The decoder stack of a causal LM (no LM head), whatever wraps it (peft, CausalLM)."""
    if is_peft(model):
        model = model.get_base_model()
    return getattr(model, "model", model)

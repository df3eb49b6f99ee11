"""Build tiny causal LMs offline from a config, or load real ones with `from_pretrained(path)`."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import ModelConfig

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


def _quantization_config(cfg: ModelConfig):
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    if not torch.cuda.is_available():
        raise RuntimeError(
            "ModelConfig.load_in_4bit/load_in_8bit needs a CUDA GPU (bitsandbytes); none is visible. "
            "Turn quantization off for CPU runs."
        )
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError("4/8-bit loading needs the 'quant' extra: uv sync --extra quant") from e
    if cfg.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=_DTYPES[cfg.dtype]
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_causal_lm(path: str, cfg: ModelConfig | None = None) -> nn.Module:
    """Load a real checkpoint from a local folder (nothing is downloaded: HF_HUB_OFFLINE=1)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from .pretrained import resolve_model_path

    cfg = cfg or ModelConfig()
    path = resolve_model_path(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"model checkpoint not found: {path} (ppolab never downloads weights)")
    quant = _quantization_config(cfg)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[cfg.dtype], quantization_config=quant,
        device_map="auto" if quant is not None else None,
    )
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return disable_dropout(model)


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

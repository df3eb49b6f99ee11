"""Value and reward models: a transformer trunk plus a small scalar head."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_dir, write_json
from .builders import base_trunk, disable_dropout, position_ids_from_mask
from .checkpoint import write_model_files


class ScalarHead(nn.Module):
    """hidden `[..., H]` -> `[..., n_out]`: linear, or an MLP of width `hidden` when hidden > 0."""

    def __init__(self, in_dim: int, hidden: int = 0, n_out: int = 1):
        super().__init__()
        self.in_dim, self.hidden, self.n_out = in_dim, hidden, n_out
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))
        else:
            self.net = nn.Linear(in_dim, n_out)
        last = self.last
        # Small initial outputs, as in OpenAI's lm-human-preferences (std 1/sqrt(d+1)).
        nn.init.normal_(last.weight, std=1.0 / (last.in_features + 1) ** 0.5)
        nn.init.zeros_(last.bias)

    @property
    def last(self) -> nn.Linear:
        """The layer that produces the outputs (the only one of a linear head)."""
        return self.net[-1] if self.hidden > 0 else self.net

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ScalarModel(nn.Module):
    """Backbone + scalar head(s), combined by fixed weights into one number per position.

    `forward(input_ids, attention_mask)` -> `[B, L]` one scalar per position (the value model's
    use); `score_last(...)` -> `[B]` at each row's last non-pad token (the reward model's use).
    """

    def __init__(self, backbone: nn.Module, head_hidden: int = 0, head_names=("reward",), head_weights=None):
        super().__init__()
        self.backbone = disable_dropout(backbone)
        hidden_size = backbone.config.hidden_size
        self.head_names = list(head_names)
        device = next(backbone.parameters()).device
        # The head stays in fp32 whatever the backbone's dtype: a bf16 head loses small updates.
        self.head = ScalarHead(hidden_size, head_hidden, len(self.head_names)).to(device)
        w = torch.tensor(head_weights if head_weights is not None else [1.0] * len(self.head_names))
        if w.numel() != len(self.head_names):
            raise ValueError(f"head_weights has {w.numel()} entries for {len(self.head_names)} heads")
        self.register_buffer("head_weights", (w / w.sum()).to(device), persistent=True)

    def head_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B, L, n_heads]` raw head outputs at every position."""
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        )
        return self.head(out.last_hidden_state.float())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head_outputs(input_ids, attention_mask) @ self.head_weights

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[B, T]` from the backbone's last hidden states `[B, T, H]`: what `forward` computes after
        its backbone pass (a fused pass that already ran the trunk reads its values here)."""
        return self.head(hidden.float()) @ self.head_weights

    def score_last(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, per_head: bool = False):
        """`[B]` at the last non-pad token of each row (`[B, n_heads]` with per_head)."""
        outs = self.head_outputs(input_ids, attention_mask)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(-1)
        picked = outs[torch.arange(outs.shape[0], device=outs.device), last]
        return picked if per_head else picked @ self.head_weights


class ValueModel(ScalarModel):
    """V(s_t) for every position; built from a policy's trunk or from a reward model."""

    # True when the backbone is the policy's own trunk (`ppolab.models.shared.value_head_on_policy`).
    shares_trunk: bool = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the value optimizer owns: only the head when the trunk is the policy's (the policy
        optimizer already steps those weights), else every parameter."""
        return list(self.head.parameters() if self.shares_trunk else self.parameters())

    def zero_last_layer(self) -> "ValueModel":
        """Start a fresh value head at V = 0 everywhere. Its default init (std 1/sqrt(d+1)) assumes
        unit-scale features; a real checkpoint's final hidden states are far larger (Gemma 3 270M's
        first value loss was 85 with it), so the first value updates chased an arbitrary offset."""
        last = self.head.last
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return self

    @classmethod
    def from_policy(cls, policy: nn.Module, head_hidden: int = 0) -> "ValueModel":
        """A value model on a copy of the policy's trunk, with a fresh head.

        The copy keeps what is trainable in the policy: a full trunk trains whole; a LoRA trunk
        keeps its frozen base and trains a copy of the adapter (plus the head), so a LoRA setup
        stays cheap. For one backbone in all roles use `value_head_on_policy` instead.
        """
        return cls(copy.deepcopy(base_trunk(policy)), head_hidden=head_hidden, head_names=("value",)).zero_last_layer()

    @classmethod
    def from_reward_model(cls, reward: "RewardModel") -> "ValueModel":
        """A value model on a copy of the reward model's trunk and head, starting at the
        *normalised* reward that PPO uses: the normalisation `(s - mean) / std` is folded into the
        head's last layer (the head weights sum to 1, so shifting every output shifts their mix)."""
        value = cls(copy.deepcopy(reward.backbone), reward.head.hidden, reward.head_names, reward.head_weights.tolist())
        value.head.load_state_dict(reward.head.state_dict())
        last = value.head.last
        with torch.no_grad():
            std, mean = float(reward.norm_std), float(reward.norm_mean)
            last.weight.div_(std)
            last.bias.sub_(mean).div_(std)
        for p in value.parameters():
            p.requires_grad_(True)
        return value


def reward_text(prompt: str, response: str, eos_token: str | None) -> str:
    """The one text a reward model scores: `prompt + response + eos`, joined with nothing between.

    Shared by `RewardModel.score` and reward-model training (`ppolab.reward`) so the model is
    trained on exactly the strings it later scores. No separator is added: prompt templates end
    with their cue ("Arabic:") and the response carries its own leading space, if any, as the
    policy generated it. The EOS is appended because PPO scores the rollout at its EOS token.
    """
    return prompt + response + (eos_token or "")


class RewardModel(ScalarModel):
    """Scores (prompt, response) at the last non-pad token, normalised by stored mean and std."""

    def __init__(self, backbone, head_hidden=0, head_names=("reward",), head_weights=None, tokenizer=None):
        super().__init__(backbone, head_hidden, head_names, head_weights)
        self.tokenizer = tokenizer
        device = self.head_weights.device
        self.register_buffer("norm_mean", torch.zeros((), device=device))
        self.register_buffer("norm_std", torch.ones((), device=device))

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, tokenizer=None, head_hidden=0, head_names=("reward",), head_weights=None):
        return cls(copy.deepcopy(base_trunk(lm)), head_hidden, head_names, head_weights, tokenizer)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B]` normalised scores of already tokenized prompt+response rows."""
        return (self.score_last(input_ids, attention_mask) - self.norm_mean) / self.norm_std

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
        """`[B]` normalised scores of texts, tokenized with this model's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("RewardModel.score needs a tokenizer; pass tokenizer= when building it")
        scores = []
        eos = self.tokenizer.eos_token or ""
        for i in range(0, len(prompts), batch_size):
            texts = [reward_text(p, r, eos) for p, r in zip(prompts[i : i + batch_size], responses[i : i + batch_size])]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            dev = next(self.parameters()).device
            scores.append(self.score_ids(enc["input_ids"].to(dev), enc["attention_mask"].to(dev)))
        return torch.cat(scores) if scores else torch.zeros(0)

    def set_normalization(self, mean: float, std: float) -> None:
        if not std > 0:
            raise ValueError(f"RewardModel normalisation std must be > 0, got {std}")
        self.norm_mean.fill_(float(mean))
        self.norm_std.fill_(float(std))

    def save(self, path: str | Path) -> None:
        """Folder with the backbone (`save_pretrained`), `head.safetensors` and `reward_config.json`."""
        from safetensors.torch import save_file

        from .builders import dequantized_copy, is_quantized

        with atomic_dir(path) as tmp:
            # A 4/8-bit trunk is saved in full precision; `load(path, model_config)` quantizes it again.
            write_model_files(dequantized_copy(self.backbone) if is_quantized(self.backbone) else self.backbone,
                              self.tokenizer, tmp / "backbone")
            state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
            save_file(state, str(tmp / "head.safetensors"))
            write_json(tmp / "reward_config.json", {
                "head_hidden": self.head.hidden, "head_names": self.head_names,
                "head_weights": self.head_weights.tolist(),
            })

    # True when `load` added a fresh head to a plain causal LM: the model must be trained before its
    # scores mean anything (`reward_model.base = path` in the pipeline).
    fresh_head: bool = False

    @classmethod
    def load(cls, path: str | Path, model_config=None, head_hidden: int = 0, seed: int = 0) -> "RewardModel":
        """A reward model from a folder, in one of three layouts:

        - ours (`save`): `reward_config.json`, `head.safetensors`, `backbone/` (+ its tokenizer);
        - a sequence-classification checkpoint (`num_labels=1`): its `score` layer becomes the head;
        - any other model folder (a causal LM): its trunk with a fresh head of width `head_hidden`
          (seeded by `seed`, `fresh_head` set), to be trained before use.

        `model_config` (a `ModelConfig`) sets the backbone's dtype and quantisation (`load_in_4bit`,
        `load_in_8bit`, `bnb_4bit_*`: the trunk is loaded quantized and frozen); LoRA, vocabulary
        trim and the architecture fields are the policy's and do not apply. The head stays fp32.
        The tokenizer is the folder's own when it has one (scoring is by text, so a reward model's
        vocabulary need not be the policy's)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

        from .builders import load_tokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"reward model checkpoint not found: {path}")
        if (path / "reward_config.json").exists():
            meta = json.loads((path / "reward_config.json").read_text())
            backbone = _load_frozen_capable(AutoModel, path / "backbone", model_config)
            tok = load_tokenizer(str(path / "backbone")) if _has_tokenizer(path / "backbone") else None
            model = cls(backbone, meta["head_hidden"], meta["head_names"], meta["head_weights"], tok)
            model.load_state_dict(load_file(str(path / "head.safetensors")), strict=False)
            return model.eval()
        tok = load_tokenizer(str(path)) if _has_tokenizer(path) else None
        archs = AutoConfig.from_pretrained(path).architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls(_load_frozen_capable(AutoModel, path, model_config), head_hidden, ("reward",), None, tok)
            model.fresh_head = True
            return model.eval()
        seq = _load_frozen_capable(AutoModelForSequenceClassification, path, model_config)
        if seq.config.num_labels != 1:
            raise ValueError(f"{path}: sequence-classification reward model must have num_labels=1")
        model = cls(base_trunk(seq), 0, ("reward",), None, tok)
        with torch.no_grad():
            model.head.net.weight.copy_(seq.score.weight.float())
            if getattr(seq.score, "bias", None) is not None:
                model.head.net.bias.copy_(seq.score.bias.float())
            else:
                model.head.net.bias.zero_()
        return model.eval()


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer_config.json", "tokenizer.json"))


def _load_frozen_capable(auto_cls, path: Path, model_config):
    """`auto_cls.from_pretrained(path)` in `model_config`'s dtype, quantized when it says so (then
    prepared as QLoRA prepares a base: frozen, norms in fp32). A sequence-classification `score`
    layer is never quantized: it becomes the fp32 head."""
    from .builders import _DTYPES, prepare_quantized, quantization_config, quantization_device_map

    dtype = _DTYPES[model_config.dtype] if model_config is not None else torch.float32
    quant = quantization_config(model_config, skip_modules=("score",)) if model_config is not None else None
    model = auto_cls.from_pretrained(path, dtype=dtype, quantization_config=quant,
                                     device_map=quantization_device_map() if quant is not None else None)
    if quant is not None:
        # Checkpointing is for a trained trunk; a quantized reward trunk is frozen.
        model = prepare_quantized(model, dataclasses.replace(model_config, gradient_checkpointing=False))
    return model


def load_reward_model(path: str | Path, model_config=None, head_hidden: int = 0, seed: int = 0) -> RewardModel:
    """`ModelConfig.reward_path`: a separate reward model with its own tokenizer, scoring by text.

    `path` is a folder in any layout `RewardModel.load` reads (ours, sequence classification, or a
    causal LM that gets a fresh head: then `fresh_head` is True and it needs reward training), or a
    known name (`gemma3-270m`). Its vocabulary may differ from the policy's: `RewardModel.score`
    tokenizes prompt + response + EOS with the reward model's own tokenizer, so the folder must
    hold one. `model_config` brings dtype and quantisation (a 4/8-bit reward model)."""
    from ..errors import UserError
    from .pretrained import resolve_model_path

    folder = Path(resolve_model_path(str(path)))
    if not folder.exists():
        raise UserError(f"model.reward_path: {folder} does not exist (ppolab never downloads weights)")
    tok_folder = folder / "backbone" if (folder / "reward_config.json").exists() else folder
    if not _has_tokenizer(tok_folder):
        raise UserError(f"model.reward_path: {tok_folder} has no tokenizer (tokenizer_config.json); a separate "
                        "reward model scores text with its own tokenizer: save it beside the weights")
    return RewardModel.load(folder, model_config, head_hidden=head_hidden, seed=seed)

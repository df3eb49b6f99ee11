"""Value and reward models: a transformer trunk plus a small scalar head."""
from __future__ import annotations

import copy
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

        with atomic_dir(path) as tmp:
            write_model_files(self.backbone, self.tokenizer, tmp / "backbone")
            state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
            save_file(state, str(tmp / "head.safetensors"))
            write_json(tmp / "reward_config.json", {
                "head_hidden": self.head.hidden, "head_names": self.head_names,
                "head_weights": self.head_weights.tolist(),
            })

    @classmethod
    def load(cls, path: str | Path, model_config=None) -> "RewardModel":
        """Load our format, or wrap a sequence-classification checkpoint (its `score` layer as head).

        `model_config` (a `ModelConfig`) sets the backbone's dtype; the head stays fp32."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForSequenceClassification

        from .builders import load_tokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"reward model checkpoint not found: {path}")
        from .builders import _DTYPES

        dtype = _DTYPES[model_config.dtype] if model_config is not None else torch.float32
        if (path / "reward_config.json").exists():
            meta = json.loads((path / "reward_config.json").read_text())
            backbone = AutoModel.from_pretrained(path / "backbone", dtype=dtype)
            tok = load_tokenizer(str(path / "backbone")) if (path / "backbone" / "tokenizer_config.json").exists() else None
            model = cls(backbone, meta["head_hidden"], meta["head_names"], meta["head_weights"], tok)
            model.load_state_dict(load_file(str(path / "head.safetensors")), strict=False)
            return model.eval()
        seq = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        if seq.config.num_labels != 1:
            raise ValueError(f"{path}: sequence-classification reward model must have num_labels=1")
        model = cls(seq.model, 0, ("reward",), None, load_tokenizer(str(path)))
        model.head.net.weight.data.copy_(seq.score.weight.data)
        if getattr(seq.score, "bias", None) is not None:
            model.head.net.bias.data.copy_(seq.score.bias.data)
        else:
            model.head.net.bias.data.zero_()
        return model.eval()

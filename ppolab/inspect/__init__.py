"""See what PPO does, token by token: record a sample of each step's rollouts, read them back, show them.

`RolloutRecorder` is given to `PPOTrainer(recorder=...)` and appends to `rollouts.jsonl`;
`load_rollouts` gives the records back as tensors per step; `render_html` writes the
self-contained page and `serve` shows it on 127.0.0.1 (`ppolab inspect --run DIR`).
"""
from .load import StepRollouts, load_rollouts, read_records
from .recorder import RolloutRecorder
from .tokens import token_texts

__all__ = ["RolloutRecorder", "StepRollouts", "load_rollouts", "read_records", "token_texts"]

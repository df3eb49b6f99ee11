"""See what PPO does, token by token: record a sample of each step's rollouts, read them back, show them.

`RolloutRecorder` is given to `PPOTrainer(recorder=...)` and appends to `rollouts.jsonl`;
`load_rollouts` gives the records back as tensors per step; `render_html` writes the
self-contained page and `serve` shows it on 127.0.0.1 (`ppolab inspect --run DIR`).
"""
from .load import StepRollouts, load_rollouts, read_records
from .page import render_html, write_html
from .recorder import RolloutRecorder
from .server import make_server, serve
from .tokens import token_texts

__all__ = ["RolloutRecorder", "StepRollouts", "load_rollouts", "make_server", "read_records", "render_html",
           "serve", "token_texts", "write_html"]

"""Test-wide settings: offline hub, few threads, deterministic seeds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)  # tiny models: a second thread mostly spin-waits, and hurts badly on a busy machine
settings.register_profile("ppolab", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("ppolab")


import pytest  # noqa: E402


@pytest.fixture
def make_ppo_trainer():
    """`tests.helpers.ppo_trainer`, the one PPOTrainer factory (tiny seeded models unless given)."""
    from tests.helpers import ppo_trainer

    return ppo_trainer

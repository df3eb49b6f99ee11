"""ppolab: a readable PPO library for RLHF of language models."""
__version__ = "0.1.0"

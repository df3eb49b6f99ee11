"""Reward-model training: Bradley–Terry on preference pairs, layer-wise unfreezing, normalisation.

See :mod:`ppolab.reward.trainer` for the design decisions (text convention shared with
``RewardModel.score``, raw scores in the loss, unfreezing schedule).
"""
from ppolab.reward.trainer import *  # noqa: F401,F403 (the public names, listed once in trainer.__all__)
from ppolab.reward.trainer import __all__  # noqa: F401

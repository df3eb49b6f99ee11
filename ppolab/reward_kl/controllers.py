"""KL-coefficient controllers: a constant beta, or Ziegler et al.'s adaptive beta.

Both expose ``.value`` (the current beta, a float) and
``update(current_kl, n_steps)``, so a trainer can hold either.
"""
import math

from .._checks import check_nonnegative, check_positive


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, coef: float):
        self.value = check_nonnegative(coef, "coef")

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards ``target``.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    eq. (2):  ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``beta <- beta * (1 + e * n_steps / horizon)``. The clip bounds how fast
    beta moves when the KL is far off target; ``horizon`` (in samples) sets
    the time scale. ``n_steps`` is the number of samples since the last update
    (TRL passes the rollout batch size).
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        self.value = check_positive(init_coef, "init_coef")
        self.target = check_positive(target, "target")
        self.horizon = check_positive(horizon, "horizon")

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            raise ValueError(f"current_kl must be finite, got {current_kl}")
        n_steps = check_nonnegative(n_steps, "n_steps")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        multiplier = 1.0 + error * n_steps / self.horizon
        # Only reachable when n_steps > 5 * horizon: beta would flip sign.
        if multiplier <= 0:
            raise ValueError(f"n_steps={n_steps} is too large for horizon={self.horizon}: beta would become <= 0")
        self.value *= multiplier

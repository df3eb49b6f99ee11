"""TD errors, generalised advantage estimation (GAE) and rewards-to-go.

Each response is one episode: token t is an action, the episode ends at the
last valid token (EOS or truncation), and the value after it is 0. So

    delta_t  = r_t + gamma * V_{t+1} - V_t              (V_{t+1} = 0 after the last valid token)
    A_t      = delta_t + gamma * lam * A_{t+1}          (Schulman et al. 2016, GAE)
    G_t      = r_t + gamma * G_{t+1}                    (rewards-to-go)
    returns  = A + V                                    (the value-function target)

All outputs are 0 on padding; padding inputs are never read.
"""
import torch

from .._checks import check_finite, check_floating, check_mask, check_same_shape, check_unit_interval


def _check_inputs(mask: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
    check_floating(**named)
    check_same_shape(**named, mask=mask)
    mask = check_mask(mask)
    for name, x in named.items():
        check_finite(x, mask, name)
    return mask


def _discounted_reverse_cumsum(x: torch.Tensor, discount: float) -> torch.Tensor:
    """``y_t = x_t + discount * y_{t+1}`` with ``y_T = 0``: one reverse scan over T, ``[B, T]``.

    ``x`` must already be 0 on padding; then ``y`` is 0 there too, because
    nothing non-zero ever follows a padding position.
    """
    out = []
    running = torch.zeros_like(x[:, 0])  # [B]
    for t in reversed(range(x.shape[1])):
        running = x[:, t] + discount * running
        out.append(running)
    return torch.stack(out[::-1], dim=1)


def td_errors(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """One-step TD errors ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``[B, T]``.

    Args:
        rewards, values: ``[B, T]`` float.  mask: ``[B, T]``.  gamma: in [0, 1].
    Returns:
        ``[B, T]``; 0 on padding. ``V_{t+1}`` is 0 after a row's last valid token.
    """
    mask = _check_inputs(mask, rewards=rewards, values=values)
    gamma = check_unit_interval(gamma, "gamma")
    values = torch.where(mask, values, 0.0)
    rewards = torch.where(mask, rewards, 0.0)
    # Shift left by one; the column after the end is 0, and V is already 0 on padding.
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    return torch.where(mask, rewards + gamma * next_values - values, 0.0)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and value targets.

    ``lam = 0`` gives the TD errors; ``lam = 1`` gives rewards-to-go minus
    values. Call under ``torch.no_grad()`` (or pass detached values) when
    the results serve as PPO targets.

    Args:
        rewards, values: ``[B, T]`` float.  mask: ``[B, T]``.
        gamma, lam: in [0, 1].
    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 on padding;
        ``returns = advantages + values`` on valid tokens.
    """
    lam = check_unit_interval(lam, "lam")
    deltas = td_errors(rewards, values, mask, gamma)  # validates everything else
    mask = check_mask(mask)
    advantages = _discounted_reverse_cumsum(deltas, float(gamma) * lam)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def rewards_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted return from each token, ``G_t = r_t + gamma * G_{t+1}``, ``[B, T]``; 0 on padding.

    Args:
        rewards: ``[B, T]`` float.  mask: ``[B, T]``.  gamma: in [0, 1].
    """
    mask = _check_inputs(mask, rewards=rewards)
    gamma = check_unit_interval(gamma, "gamma")
    return _discounted_reverse_cumsum(torch.where(mask, rewards, 0.0), gamma)

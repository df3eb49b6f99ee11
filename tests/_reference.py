"""Slow, obviously-correct references: plain Python loops over (b, t) on floats.

Inputs are nested lists (``tensor.tolist()``); ``mask`` is a list of 0/1
rows. Padding positions are never read, and outputs hold 0.0 there.
Written straight from the formulas, independently of ppolab's code.
"""
import math


def valid_positions(mask):
    return [(b, t) for b in range(len(mask)) for t in range(len(mask[b])) if mask[b][t]]


def zeros_like(mask):
    return [[0.0] * len(row) for row in mask]


def per_token_kl(logprobs, ref_logprobs, mask, estimator):
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        d = logprobs[b][t] - ref_logprobs[b][t]
        if estimator == "k1":
            out[b][t] = d
        elif estimator == "k2":
            out[b][t] = 0.5 * d * d
        else:
            r = ref_logprobs[b][t] - logprobs[b][t]
            out[b][t] = math.exp(r) - 1.0 - r
    return out


def kl_penalized_rewards(scores, kl, mask, kl_coef, missing_eos_penalty=None, has_eos=None):
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        out[b][t] = -kl_coef * kl[b][t]
    for b in range(len(mask)):
        last = max(t for t in range(len(mask[b])) if mask[b][t])
        score = scores[b]
        if missing_eos_penalty is not None and not has_eos[b]:
            score = score - missing_eos_penalty
        out[b][last] += score
    return out


def adaptive_kl(init_coef, target, horizon, updates):
    """``updates``: list of (current_kl, n_steps); returns the coefficient after each."""
    coef, history = init_coef, []
    for kl, n in updates:
        error = kl / target - 1.0
        if error > 0.2:
            error = 0.2
        if error < -0.2:
            error = -0.2
        coef = coef * (1.0 + error * n / horizon)
        history.append(coef)
    return history


def _value_after(values, mask, b, t):
    """V_{t+1}, or 0 when t is the row's last valid token."""
    if t + 1 < len(mask[b]) and mask[b][t + 1]:
        return values[b][t + 1]
    return 0.0


def td_errors(rewards, values, mask, gamma):
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        out[b][t] = rewards[b][t] + gamma * _value_after(values, mask, b, t) - values[b][t]
    return out


def gae(rewards, values, mask, gamma, lam):
    """Direct sum A_t = sum_k (gamma*lam)^k delta_{t+k} (no recursion)."""
    deltas = td_errors(rewards, values, mask, gamma)
    adv, ret = zeros_like(mask), zeros_like(mask)
    for b, t in valid_positions(mask):
        total, k = 0.0, 0
        while t + k < len(mask[b]) and mask[b][t + k]:
            total += (gamma * lam) ** k * deltas[b][t + k]
            k += 1
        adv[b][t] = total
        ret[b][t] = total + values[b][t]
    return adv, ret


def rewards_to_go(rewards, mask, gamma):
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        total, k = 0.0, 0
        while t + k < len(mask[b]) and mask[b][t + k]:
            total += gamma**k * rewards[b][t + k]
            k += 1
        out[b][t] = total
    return out


def masked_mean(x, mask):
    vals = [x[b][t] for b, t in valid_positions(mask)]
    return sum(vals) / len(vals)


def masked_row_means(x, mask):
    return [sum(x[b][t] for t in range(len(row)) if row[t]) / sum(row) for b, row in enumerate(mask)]


def masked_var(x, mask, unbiased=True):
    vals = [x[b][t] for b, t in valid_positions(mask)]
    n = len(vals)
    mean = sum(vals) / n
    ss = sum((v - mean) ** 2 for v in vals)
    if unbiased:
        return 0.0 if n == 1 else ss / (n - 1)
    return ss / n


def masked_whiten(x, mask, shift_mean=True, eps=1e-8):
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        out[b][t] = (x[b][t] - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)
    return out


def policy_loss_terms(logprobs, old_logprobs, advantages, mask, eps, eps_high=None, dual_clip=None):
    """Per token: (loss, d loss / d logprob, clipped low, clipped high, dual-clipped), as [B][T] lists."""
    eps_high = eps if eps_high is None else eps_high
    loss, grad, low, high, dual = (zeros_like(mask) for _ in range(5))
    for b, t in valid_positions(mask):
        a = advantages[b][t]
        ratio = math.exp(logprobs[b][t] - old_logprobs[b][t])
        clipped_ratio = min(max(ratio, 1 - eps), 1 + eps_high)
        value = max(-a * ratio, -a * clipped_ratio)
        # The objective is flat where clipping binds in the advantage's favour.
        flat = (a > 0 and ratio > 1 + eps_high) or (a < 0 and ratio < 1 - eps)
        slope = 0.0 if flat else -a * ratio
        if dual_clip is not None and a < 0 and value > -dual_clip * a:
            value, slope, dual[b][t] = -dual_clip * a, 0.0, 1.0
        loss[b][t], grad[b][t] = value, slope
        low[b][t], high[b][t] = float(ratio < 1 - eps), float(ratio > 1 + eps_high)
    return loss, grad, low, high, dual


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, eps):
    """Token-mean, symmetric clip. Returns (loss, clipfrac, approx_kl, ratio_mean, grad wrt logprobs)."""
    loss, grad, low, high, _ = policy_loss_terms(logprobs, old_logprobs, advantages, mask, eps)
    n = len(valid_positions(mask))
    log_ratio = [[lp - o for lp, o in zip(r1, r2)] for r1, r2 in zip(logprobs, old_logprobs)]
    approx_kl = masked_mean([[0.5 * d * d for d in row] for row in log_ratio], mask)
    ratio_mean = masked_mean([[math.exp(d) for d in row] for row in log_ratio], mask)
    clipfrac = masked_mean([[lo + hi for lo, hi in zip(r1, r2)] for r1, r2 in zip(low, high)], mask)
    return masked_mean(loss, mask), clipfrac, approx_kl, ratio_mean, [[g / n for g in row] for row in grad]


def aggregate(x, mask, mode, norm_length=None):
    """verl's loss_agg_mode, straight from the definitions."""
    rows = [[x[b][t] for t in range(len(mask[b])) if mask[b][t]] for b in range(len(mask))]
    if mode == "token-mean":
        return sum(v for row in rows for v in row) / sum(len(row) for row in rows)
    if mode == "seq-mean-token-sum":
        return sum(sum(row) for row in rows) / len(rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(row) / len(row) for row in rows) / len(rows)
    length = len(mask[0]) if norm_length is None else norm_length
    return sum(v for row in rows for v in row) / (len(rows) * length)


def aggregation_weights(mask, mode, norm_length=None):
    """d aggregate / d x[b][t]: the weight each valid token gets (0 on padding)."""
    n_tokens, n_rows = len(valid_positions(mask)), len(mask)
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        if mode == "token-mean":
            out[b][t] = 1.0 / n_tokens
        elif mode == "seq-mean-token-sum":
            out[b][t] = 1.0 / n_rows
        elif mode == "seq-mean-token-mean":
            out[b][t] = 1.0 / (n_rows * sum(mask[b]))
        else:
            out[b][t] = 1.0 / (n_rows * (len(mask[b]) if norm_length is None else norm_length))
    return out


def rollout_correction_weights(logprobs, sampler_logprobs, mask, mode, cap, level):
    """Per-token weights from rho = exp(trainer - sampler), per token or the product over a row."""
    out = zeros_like(mask)
    for b in range(len(mask)):
        valid = [t for t in range(len(mask[b])) if mask[b][t]]
        row_log_rho = sum(logprobs[b][t] - sampler_logprobs[b][t] for t in valid)
        for t in valid:
            log_rho = row_log_rho if level == "sequence" else logprobs[b][t] - sampler_logprobs[b][t]
            rho = math.exp(min(log_rho, 700.0))  # > any cap; no overflow
            if mode == "none":
                out[b][t] = 1.0
            elif mode == "tis":
                out[b][t] = min(rho, cap)
            else:
                out[b][t] = rho if rho <= cap else 0.0
    return out


def mismatch_stats(logprobs, sampler_logprobs, mask):
    """(mean |d|, max |d|, mean k3 of KL(sampler || trainer), share of r outside [0.5, 2]), d = trainer - sampler."""
    d = [logprobs[b][t] - sampler_logprobs[b][t] for b, t in valid_positions(mask)]
    k3 = [math.exp(x) - 1.0 - x for x in d]
    outside = [1.0 if (math.exp(x) < 0.5 or math.exp(x) > 2.0) else 0.0 for x in d]
    n = len(d)
    return sum(abs(x) for x in d) / n, max(abs(x) for x in d), sum(k3) / n, sum(outside) / n


def kl_gradient(logprobs, ref_logprobs, mask, estimator):
    """d per_token_kl / d logprob per token, differentiated by hand (r = ref - logprob)."""
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        r = ref_logprobs[b][t] - logprobs[b][t]
        out[b][t] = {"k1": 1.0, "k2": -r, "k3": 1.0 - math.exp(r)}[estimator]
    return out


def group_advantages(scores, group_size, scale="std", eps=1e-6):
    out = []
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        mean = sum(group) / len(group)
        if all(s == group[0] for s in group):  # no signal: exactly 0
            out += [0.0] * len(group)
            continue
        std = math.sqrt(sum((s - mean) ** 2 for s in group) / (len(group) - 1)) if scale == "std" else None
        out += [(s - mean) / (std + eps) if scale == "std" else s - mean for s in group]
    return out


def rloo_advantages(scores, group_size):
    out = []
    for start in range(0, len(scores), group_size):
        group = scores[start : start + group_size]
        for i, s in enumerate(group):
            others = [o for j, o in enumerate(group) if j != i]
            out.append(0.0 if all(o == s for o in others) else s - sum(others) / len(others))
    return out


def expand_to_tokens(advantages, mask):
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        out[b][t] = advantages[b]
    return out


def clipped_value_loss(values, old_values, returns, mask, eps):
    """Returns (loss, value_clipfrac)."""
    pos = valid_positions(mask)
    n = len(pos)
    loss = clipfrac = 0.0
    for b, t in pos:
        v, old, r = values[b][t], old_values[b][t], returns[b][t]
        v_clipped = old + min(max(v - old, -eps), eps)
        loss += 0.5 * max((v - r) ** 2, (v_clipped - r) ** 2) / n
        clipfrac += (abs(v - old) > eps) / n
    return loss, clipfrac


def entropy_from_logits(logits, mask):
    out = zeros_like(mask)
    for b, t in valid_positions(mask):
        row = logits[b][t]
        top = max(row)
        z = sum(math.exp(l - top) for l in row)
        probs = [math.exp(l - top) / z for l in row]
        out[b][t] = -sum(p * math.log(p) for p in probs if p > 0)
    return out


# --- Test data shared by the property tests (not references themselves). ---

import dataclasses  # noqa: E402

import torch  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JUNK = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 12345.0]
unit_interval = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))


@dataclasses.dataclass
class Batch:
    mask: torch.Tensor  # [B, T] bool or float 0/1, ones then zeros
    xs: list  # [B, T] float tensors, random also on padding
    dtype: torch.dtype

    @property
    def bool_mask(self):
        return self.mask.bool()


@st.composite
def batches(draw, n=1, scale=1.0, max_b=6, max_t=12):
    """B in 1..6, T in 1..12, rows of length 1, T or anything between; f32/f64; bool/float mask."""
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    lengths = draw(st.lists(st.one_of(st.just(1), st.just(t), st.integers(1, t)), min_size=b, max_size=b))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    xs = [(scale * torch.randn(b, t, generator=gen, dtype=torch.float64)).to(dtype) for _ in range(n)]
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    if draw(st.booleans()):
        mask = mask.to(dtype)
    return Batch(mask, xs, dtype)


def with_junk(x, mask, junk):
    """``x`` with every padding position set to ``junk``."""
    return torch.where(mask.bool(), x, torch.full_like(x, junk))


def pad_columns(x, k, value):
    """Append ``k`` columns filled with ``value`` (for ``x`` ``[B, T]`` or ``[B, T, V]``)."""
    extra = torch.full((x.shape[0], k, *x.shape[2:]), value, dtype=x.dtype)
    return torch.cat([x, extra], dim=1)


def assert_matches(actual, expected, dtype, scale=1.0):
    """Compare a tensor with a reference list/float, tolerance by dtype."""
    tol = (1e-4 if dtype == torch.float32 else 1e-9)
    torch.testing.assert_close(
        actual.to(torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=tol * scale
    )

"""Noise schedules (ᾱ tables indexed by the training step) and DDIM sampling indices."""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("cosine", "linear")


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008) -> Tensor:
    """Return ᾱ_i, i = 0 … N−1, of Nichol & Dhariwal's cosine schedule as float64.

    With u_k = k/N and f(u) = cos²(((u + s)/(1 + s))·π/2): β_k = min(1 − f(u_{k+1})/f(u_k),
    0.999) and ᾱ_i = ∏_{k≤i}(1 − β_k), so entry i sits at continuous time (i + 1)/N.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    # Not diffusers' betas_for_alpha_bar: it returns float32 β, which moves ᾱ_{N−1} by 1.3e-5
    # (relative) at N = 8193 after the 0.999 clip; CDC builds this table in float64.
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(0.0, 0.999)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    """Return ᾱ_i, i = 0 … N−1, for β linearly spaced from `beta_start` to `beta_end` (float64)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def make_alphas_cumprod(schedule: str, num_steps: int) -> Tensor:
    """Return the ᾱ table of a named schedule: "cosine" (s = 0.008) or "linear".

    "linear" uses the DDPM endpoints rescaled to N steps as in CDC: β from 1e-4·1000/N to
    0.02·1000/N (N = 20000: 5e-6 to 1e-3).
    """
    if schedule == "cosine":
        return cosine_alphas_cumprod(num_steps)
    if schedule == "linear":
        scale = 1000 / num_steps
        return linear_alphas_cumprod(num_steps, 1e-4 * scale, 0.02 * scale)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def snr(alphas_cumprod: Tensor) -> Tensor:
    """Return the signal-to-noise ratio ᾱ/(1 − ᾱ)."""
    return alphas_cumprod / (1 - alphas_cumprod)


def _is_integral(num_train_steps: int, num_steps: int) -> bool:
    return num_steps == 1 or (num_train_steps - 1) % (num_steps - 1) == 0


def ddim_indices(num_train_steps: int, num_steps: int, require_integral: bool = False) -> Tensor:
    """Return the S training indices a DDIM decoder visits, ascending (long).

    They are linspace(0, N−1, S) truncated to integers, as in CDC, with S = 1 giving [N−1].
    The truncation is done in exact integer arithmetic (CDC's float32 linspace agrees for its
    released step counts). With `require_integral`, S values for which linspace(0, N−1, S) is
    not integral are rejected (for N = 8193 the integral counts are 1 and 2^k + 1).
    """
    n, s = num_train_steps, num_steps
    if n < 1:
        raise ValueError(f"num_train_steps must be >= 1, got {n}")
    if not 1 <= s <= n:
        raise ValueError(f"num_steps must be in [1, {n}], got {s}")
    if require_integral and not _is_integral(n, s):
        lower = next(k for k in range(s - 1, 0, -1) if _is_integral(n, k))
        upper = next(k for k in range(s + 1, n + 1) if _is_integral(n, k))
        raise ValueError(
            f"linspace(0, {n - 1}, {s}) is not integral; the nearest integral step counts for "
            f"{n} training steps are {lower} and {upper}"
        )
    if s == 1:
        return torch.tensor([n - 1], dtype=torch.long)
    return torch.arange(s, dtype=torch.long) * (n - 1) // (s - 1)


def strided_ddim_indices(num_train_steps: int, num_steps: int) -> Tensor:
    """Return the S training indices of guided-diffusion's `space_timesteps(N, "ddimS")`,
    ascending (long): range(0, N, k) for the smallest stride k giving exactly S indices.

    N = 1000, S = 8: [0, 125, …, 875]. Raises ValueError when no stride gives S indices.
    """
    n, s = num_train_steps, num_steps
    if not 1 <= s <= n:
        raise ValueError(f"num_steps must be in [1, {n}], got {s}")
    # the index count ceil(N/k) falls as k grows: k = ceil(N/S) is the first stride with at
    # most S indices, and no stride has exactly S unless this one does
    stride = -(-n // s)
    if len(range(0, n, stride)) != s:
        raise ValueError(f"no stride k gives exactly {s} indices of range(0, {n}, k)")
    return torch.arange(0, n, stride, dtype=torch.long)


def continuous_alpha_cumprod(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """ᾱ at fractional training indices `t` ∈ [0, N−1], differentiable in `t` (float64).

    log ᾱ is interpolated linearly between neighbouring entries of the table, i.e. β is held
    constant within each step, so the value equals the table at integer t and the derivative in
    t is log(ᾱ_{i+1}/ᾱ_i)·ᾱ(t) ≠ 0 between i and i + 1 (the one-sided slope of the last
    interval at t = N−1).
    """
    # torch has no differentiable interp over a table; lerp of gathered neighbours is that.
    n = alphas_cumprod.numel()
    log_table = alphas_cumprod.to(torch.float64).log()
    position = t.to(torch.float64).clamp(0, n - 1)
    lower = position.detach().floor().long().clamp(max=n - 2)
    log_alpha = torch.lerp(log_table[lower], log_table[lower + 1], position - lower)
    return log_alpha.exp()

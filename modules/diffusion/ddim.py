"""x₀/ε conversions, forward noising and a DDIM sampler over explicit training indices."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _signal_noise_scales(
    alpha_cumprod: Tensor | float, *operands: Tensor
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Return √ᾱ, √(1 − ᾱ) and the operands, all in at least float32 (the scales computed in
    float64). Nothing takes a low-precision dtype: in bf16, √(1 − ᾱ_299) = 0.638605 would be
    0.636719 (a 0-dim scale would be cast to a bf16 operand's dtype by type promotion)."""
    dtype = torch.promote_types(torch.result_type(*operands), torch.float32)
    a = torch.as_tensor(alpha_cumprod, dtype=torch.float64, device=operands[0].device)
    return a.sqrt().to(dtype), (1 - a).sqrt().to(dtype), [t.to(dtype) for t in operands]


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_cumprod: Tensor | float) -> Tensor:
    """Return x₀ = (x_t − √(1 − ᾱ)·ε)/√ᾱ; ᾱ broadcasts against x_t (e.g. B×1×1×1)."""
    sqrt_a, sqrt_one_minus_a, (x_t, eps) = _signal_noise_scales(alpha_cumprod, x_t, eps)
    return (x_t - sqrt_one_minus_a * eps) / sqrt_a


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_cumprod: Tensor | float) -> Tensor:
    """Return ε = (x_t − √ᾱ·x₀)/√(1 − ᾱ); ᾱ broadcasts against x_t (e.g. B×1×1×1)."""
    sqrt_a, sqrt_one_minus_a, (x_t, x0) = _signal_noise_scales(alpha_cumprod, x_t, x0)
    return (x_t - sqrt_a * x0) / sqrt_one_minus_a


def q_sample(x0: Tensor, noise: Tensor, alpha_cumprod: Tensor | float) -> Tensor:
    """Return x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε; ᾱ broadcasts against x0 (e.g. B×1×1×1)."""
    # diffusers' add_noise needs a scheduler instance and timesteps; here ᾱ is given directly.
    sqrt_a, sqrt_one_minus_a, (x0, noise) = _signal_noise_scales(alpha_cumprod, x0, noise)
    return sqrt_a * x0 + sqrt_one_minus_a * noise


def ddim_sample(
    denoise: Denoiser,
    alphas_cumprod: Tensor,
    indices: Tensor,
    x_start: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run DDIM (Song et al. 2021) from `x_start` over `indices` (ascending training indices,
    visited from last to first) and return the final x̂₀.

    `denoise(x_t, index)` gets the state and a long tensor (B,) filled with the training index
    and returns `(x0_hat, eps_hat)`; it owns the time input, the parameterisation and any
    clamping. Each step sets x_prev = √ᾱ_prev·x̂₀ + √(max(0, 1 − ᾱ_prev − σ²))·ε̂ + σ·ξ with
    σ = η·√((1 − ᾱ_prev)/(1 − ᾱ))·√(1 − ᾱ/ᾱ_prev) and ξ ~ N(0, I) from `generator`; the last
    step (first index, ᾱ_prev = 1) returns x̂₀. `x_start` is zeros for CDC's deterministic
    decoding or γ·N(0, I) drawn by the caller.
    """
    # Not diffusers' DDIMScheduler: it takes the previous timestep as t − N//S, which misses
    # CDC's linspace(0, N−1, S) indices (N = 8193, S = 17: stride 512, N//S = 481).
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if indices.ndim != 1 or indices.numel() == 0:
        raise ValueError(
            f"indices must be a non-empty 1-D tensor, got shape {tuple(indices.shape)}"
        )
    steps = indices.tolist()
    if any(a >= b for a, b in pairwise(steps)):
        raise ValueError("indices must be strictly ascending")
    if steps[0] < 0 or steps[-1] >= alphas_cumprod.numel():
        raise ValueError(f"indices must lie in [0, {alphas_cumprod.numel() - 1}]")

    # The schedule is read to the host once; coefficients are Python (float64) floats per step.
    alphas = alphas_cumprod.detach().to("cpu", torch.float64)[steps].tolist()
    # Entry i − 1 holds step i's coefficients; step 0 (ᾱ_prev = 1) only returns x̂₀.
    x0_coefs, eps_coefs, sigmas = [], [], []
    for a_prev, a in pairwise(alphas):
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(max(0.0, 1 - a / a_prev))
        x0_coefs.append(math.sqrt(a_prev))
        eps_coefs.append(math.sqrt(max(0.0, 1 - a_prev - sigma**2)))
        sigmas.append(sigma)

    batch = x_start.shape[0]

    def predict(x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        return denoise(x, torch.full((batch,), steps[i], dtype=torch.long, device=x.device))

    x = x_start
    for i in reversed(range(1, len(steps))):
        x0_hat, eps_hat = predict(x, i)
        x = x0_coefs[i - 1] * x0_hat + eps_coefs[i - 1] * eps_hat
        if sigmas[i - 1] > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigmas[i - 1] * noise
    return predict(x, 0)[0]

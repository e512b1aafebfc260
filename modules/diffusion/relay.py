"""RDEIC's relay residual diffusion on SD's ε-prediction schedule, and its respaced sampler.

The reverse process starts at N = 299 (0-based) from the codec's latent z_c instead of pure
noise: z_N = √ᾱ_N·z_c + √(1 − ᾱ_N)·ε. Training folds the residual z_c − z_0 into the noise,
ε′ = ε + (z_c − z_0)/λ with λ = √((1 − ᾱ_N)/ᾱ_N), so that z_t = √ᾱ_t·z_0 + √(1 − ᾱ_t)·ε′
equals the start point at t = N. Decoding runs DDPM's posterior over 2 or 5 of the 300 steps
[0, N], spaced as improved-diffusion's `space_timesteps`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from .ddim import q_sample

#: 0-based index of the relay start N (RDEIC trains and samples on the first 300 SD steps)
RELAY_START = 299

NoisePredictor = Callable[[Tensor, Tensor], Tensor]


def relay_coefficient(alphas_cumprod: Tensor, start: int = RELAY_START) -> float:
    """λ = √((1 − ᾱ_N)/ᾱ_N) (0.829860 for SD at N = 299); reads ᾱ_N to the host."""
    alpha = float(alphas_cumprod[start])
    return math.sqrt((1 - alpha) / alpha)


def relay_start(
    z_c: Tensor, noise: Tensor, alphas_cumprod: Tensor, start: int = RELAY_START
) -> Tensor:
    """Start point of the reverse process z_N = √ᾱ_N·z_c + √(1 − ᾱ_N)·ε."""
    return q_sample(z_c, noise, alphas_cumprod[start])


def relay_noise(noise: Tensor, z_c: Tensor, z0: Tensor, coefficient: float | Tensor) -> Tensor:
    """Relay noise ε′ = ε + (z_c − z0)/λ; z_c is not detached (the loss reaches the codec).

    With z_t = q_sample(z0, ε′, ᾱ_t) the residual enters as η_t·(z_c − z0),
    η_t = √(1 − ᾱ_t)/λ, and z_t equals `relay_start` at t = N.
    """
    return noise + (z_c - z0) / coefficient


def respaced_timesteps(steps: int, used: int = RELAY_START + 1) -> list[int]:
    """Timesteps of improved-diffusion's `space_timesteps(used, str(steps))`, descending.

    2 → [299, 0], 5 → [299, 224, 150, 75, 0] (Python's round-half-to-even); 1 → [0].
    """
    # Not diffusers' set_timesteps(num_inference_steps): none of its spacings gives these sets.
    if used < 1:
        raise ValueError(f"used timesteps must be >= 1, got {used}")
    if not 1 <= steps <= used:
        raise ValueError(f"sampling steps must be in [1, {used}], got {steps}")
    stride = (used - 1) / (steps - 1) if steps > 1 else 1.0
    taken, position = [], 0.0
    for _ in range(steps):
        taken.append(round(position))
        position += stride
    return sorted(set(taken), reverse=True)


def respaced_coefficients(alphas_cumprod: Tensor, timesteps: Sequence[int]) -> dict[str, Tensor]:
    """Coefficients of the respaced DDPM posterior, one entry per timestep (in the given,
    descending order), as float64 CPU tensors.

    With ᾱ′ = ᾱ[τ_k] and ᾱ′_prev = ᾱ[τ_{k−1}] (1 after the last): β′ = 1 − ᾱ′/ᾱ′_prev,
    σ = √(β′(1 − ᾱ′_prev)/(1 − ᾱ′)), c1 = β′√ᾱ′_prev/(1 − ᾱ′) (x̂0), and
    c2 = (1 − ᾱ′_prev)√(1 − β′)/(1 − ᾱ′) (x).
    """
    table = alphas_cumprod.detach().to("cpu", torch.float64)
    alpha = table[list(timesteps)]
    alpha_prev = torch.cat([alpha[1:], alpha.new_ones(1)])
    beta = 1 - alpha / alpha_prev
    return {
        "alphas_cumprod": alpha,
        "alphas_cumprod_prev": alpha_prev,
        "betas": beta,
        "sigmas": (beta * (1 - alpha_prev) / (1 - alpha)).sqrt(),
        "c1": beta * alpha_prev.sqrt() / (1 - alpha),
        "c2": (1 - alpha_prev) * (1 - beta).sqrt() / (1 - alpha),
    }


def respaced_ddpm_sample(
    denoise: NoisePredictor,
    x_start: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run DDPM (`fixed_small` variance, no clipping) from `x_start` over `timesteps`
    (descending training indices) and return x̂0 predicted at the last one.

    `denoise(x, t)` gets the state and a long tensor (B,) filled with the original timestep
    τ_k and returns ε̂. Each step sets x̂0 = x/√ᾱ′ − √(1/ᾱ′ − 1)·ε̂ and x ← c1·x̂0 + c2·x +
    σ·ξ (no noise at t = 0), ξ drawn from `generator`, with the coefficients of
    `respaced_coefficients`. Differentiable; ᾱ is read to the host once per call.
    """
    # diffusers' DDPMScheduler with custom timesteps is exactly this posterior (the tests check
    # it against the reference coefficients); it rebuilds ᾱ from float32 β, so the float64
    # table given here replaces it and the step coefficients equal respaced_coefficients().
    table = alphas_cumprod.detach().to("cpu", torch.float64)
    betas = 1 - table / torch.cat([table.new_ones(1), table[:-1]])
    scheduler = DDPMScheduler(
        num_train_timesteps=table.numel(),
        trained_betas=betas.numpy(),
        variance_type="fixed_small",
        clip_sample=False,
        prediction_type="epsilon",
    )
    scheduler.alphas_cumprod = table
    timesteps = [int(t) for t in timesteps]
    if not timesteps or timesteps[-1] < 0:
        raise ValueError(f"timesteps must be non-empty indices >= 0, got {timesteps}")
    scheduler.set_timesteps(timesteps=timesteps)

    x = x_start
    for t in timesteps:
        eps = denoise(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        # ε̂ in x's dtype, so that the step and its noise stay in it under autocast
        step = scheduler.step(eps.to(x.dtype), t, x, generator=generator)
        x = step.prev_sample
    return step.pred_original_sample

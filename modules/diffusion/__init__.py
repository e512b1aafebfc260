"""Diffusion utilities: noise schedules, x₀/ε conversions and a DDIM sampler."""

from .ddim import ddim_sample, eps_from_x0, q_sample, x0_from_eps
from .schedules import (
    cosine_alphas_cumprod,
    ddim_indices,
    linear_alphas_cumprod,
    make_alphas_cumprod,
    snr,
)

__all__ = [
    "cosine_alphas_cumprod",
    "ddim_indices",
    "ddim_sample",
    "eps_from_x0",
    "linear_alphas_cumprod",
    "make_alphas_cumprod",
    "q_sample",
    "snr",
    "x0_from_eps",
]

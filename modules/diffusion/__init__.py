"""Diffusion utilities: noise schedules, x₀/ε conversions, DDIM and respaced DDPM samplers, RDEIC's
relay residual diffusion and the Stable Diffusion 2.1 backbone."""

from .ddim import ddim_sample, eps_from_x0, q_sample, x0_from_eps
from .relay import (
    RELAY_START,
    relay_coefficient,
    relay_noise,
    relay_start,
    respaced_coefficients,
    respaced_ddpm_sample,
    respaced_timesteps,
)
from .schedules import (
    continuous_alpha_cumprod,
    cosine_alphas_cumprod,
    ddim_indices,
    linear_alphas_cumprod,
    make_alphas_cumprod,
    snr,
    strided_ddim_indices,
)
from .sd_backbone import (
    StableDiffusionBackbone,
    alphas_cumprod_from_config,
    load_backbone,
    save_random_sd,
    save_tiny_sd,
)

__all__ = [
    "RELAY_START",
    "StableDiffusionBackbone",
    "alphas_cumprod_from_config",
    "continuous_alpha_cumprod",
    "cosine_alphas_cumprod",
    "ddim_indices",
    "ddim_sample",
    "eps_from_x0",
    "linear_alphas_cumprod",
    "load_backbone",
    "make_alphas_cumprod",
    "q_sample",
    "relay_coefficient",
    "relay_noise",
    "relay_start",
    "respaced_coefficients",
    "respaced_ddpm_sample",
    "respaced_timesteps",
    "save_random_sd",
    "save_tiny_sd",
    "snr",
    "strided_ddim_indices",
    "x0_from_eps",
]

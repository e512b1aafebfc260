"""Tests for RDEIC's relay constants, the respaced timesteps and the respaced DDPM sampler."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from modules.diffusion import (
    RELAY_START,
    q_sample,
    relay_coefficient,
    relay_noise,
    relay_start,
    respaced_coefficients,
    respaced_ddpm_sample,
    respaced_timesteps,
)
from modules.diffusion.sd_backbone import SD21_BASE_SCHEDULER, alphas_cumprod_from_config

# Reference §4: (τ, ᾱ′, ᾱ′_prev, β′, σ, c1, c2) for 2 and 5 steps.
TABLE = {
    2: [
        (299, 0.59218, 0.99915, 0.40731, 0.0291, 0.9983, 0.0016),
        (0, 0.99915, 1.0, 0.00085, 0.0, 1.0, 0.0),
    ],
    5: [
        (299, 0.59218, 0.71592, 0.17284, 0.3470, 0.3586, 0.6335),
        (224, 0.71592, 0.82781, 0.13516, 0.2862, 0.4329, 0.5637),
        (150, 0.82781, 0.92409, 0.10419, 0.2143, 0.5817, 0.4172),
        (75, 0.92409, 0.99915, 0.07512, 0.0290, 0.9892, 0.0108),
        (0, 0.99915, 1.0, 0.00085, 0.0, 1.0, 0.0),
    ],
}
COLUMNS = ("alphas_cumprod", "alphas_cumprod_prev", "betas", "sigmas", "c1", "c2")


@pytest.fixture(scope="module")
def alphas() -> torch.Tensor:
    return alphas_cumprod_from_config(SD21_BASE_SCHEDULER)


def test_sd_schedule_and_relay_constants(alphas):
    assert alphas.dtype == torch.float64 and alphas.shape == (1000,)
    # the closed form of the scaled-linear schedule, term by term
    b0, b1 = math.sqrt(0.00085), math.sqrt(0.012)
    expected = math.prod(1 - (b0 + t * (b1 - b0) / 999) ** 2 for t in range(300))
    assert alphas[RELAY_START].item() == pytest.approx(expected, abs=1e-12)
    assert alphas[299].item() == pytest.approx(0.592183, abs=1e-6)
    assert alphas[299].sqrt().item() == pytest.approx(0.769534, abs=1e-6)
    assert relay_coefficient(alphas) == pytest.approx(0.829860, abs=1e-6)
    assert 1 / relay_coefficient(alphas) == pytest.approx(1.205023, abs=1e-6)
    # diffusers' float32 table agrees to float32 precision
    reference = DDPMScheduler.from_config(SD21_BASE_SCHEDULER).alphas_cumprod
    torch.testing.assert_close(alphas.float(), reference, atol=1e-6, rtol=0)


def test_schedule_coefficients_never_take_a_low_precision_dtype(alphas):
    """Under bf16 autocast z_c arrives in bf16; the relay noise scale √(1 − ᾱ_299) must stay
    0.638605 (bf16 would make it 0.636719) and the arithmetic at least float32."""
    from modules.diffusion import eps_from_x0, x0_from_eps

    zeros, ones = torch.zeros(1, 4, 2, 2, dtype=torch.bfloat16), torch.ones(1, 4, 2, 2)
    start = relay_start(zeros, ones.bfloat16(), alphas)
    assert start.dtype == torch.float32
    assert start.flatten()[0].item() == pytest.approx(math.sqrt(1 - 0.592183), abs=1e-6)
    assert start.flatten()[0].item() == pytest.approx(0.638605, abs=1e-6)
    signal = q_sample(ones.bfloat16(), zeros, alphas[299])
    assert signal.flatten()[0].item() == pytest.approx(0.769534, abs=1e-6)
    x0 = x0_from_eps(ones.bfloat16(), zeros, alphas[299])  # 1/√ᾱ = 1.299487
    assert x0.dtype == torch.float32 and x0.flatten()[0].item() == pytest.approx(
        1.299487, abs=1e-6
    )
    eps = eps_from_x0(ones.bfloat16(), zeros, alphas[299])  # 1/√(1 − ᾱ) = 1.565912
    assert eps.flatten()[0].item() == pytest.approx(1.565912, abs=1e-6)
    assert q_sample(zeros.double(), ones.double(), alphas[299]).dtype == torch.float64


def test_relay_forward_process(alphas):
    gen = torch.Generator().manual_seed(0)
    z0, z_c, noise = (torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in "abc")
    lam = relay_coefficient(alphas)
    eps_relay = relay_noise(noise, z_c, z0, lam)
    # at t = N the relay forward process lands exactly on the start point
    torch.testing.assert_close(
        q_sample(z0, eps_relay, alphas[299]), relay_start(z_c, noise, alphas), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        relay_start(z_c, noise, alphas),
        alphas[299].sqrt() * z_c + (1 - alphas[299]).sqrt() * noise,
        rtol=0,
        atol=1e-12,
    )
    # the residual enters with weight η_t = √(1 − ᾱ_t)/λ (reference §2)
    for t, eta in [(0, 0.0351), (50, 0.2652), (150, 0.5000), (250, 0.6882), (299, 0.7695)]:
        z_t = q_sample(z0, eps_relay, alphas[t])
        clean = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * noise
        residual = (z_t - clean) / (z_c - z0)
        assert residual.min().item() == pytest.approx(eta, abs=1e-4)
        assert residual.max().item() == pytest.approx(residual.min().item(), abs=1e-9)
    # z_c is not detached: the relay noise back-propagates into the codec's latent
    z_c.requires_grad_(True)
    relay_noise(noise, z_c, z0, lam).sum().backward()
    torch.testing.assert_close(z_c.grad, torch.full_like(z_c, 1 / lam))


def space_timesteps(num_timesteps: int, steps: int) -> set[int]:
    """improved-diffusion's space_timesteps with one section, as published."""
    frac_stride = 1 if steps <= 1 else (num_timesteps - 1) / (steps - 1)
    cur_idx, taken = 0.0, []
    for _ in range(steps):
        taken.append(round(cur_idx))
        cur_idx += frac_stride
    return set(taken)


def test_respaced_timesteps():
    assert respaced_timesteps(2) == [299, 0]
    assert respaced_timesteps(5) == [299, 224, 150, 75, 0]
    assert respaced_timesteps(1) == [0]
    assert respaced_timesteps(300) == list(range(299, -1, -1))
    for steps in (3, 4, 7, 10, 50, 299):
        taken = respaced_timesteps(steps)
        assert taken == sorted(space_timesteps(300, steps), reverse=True)
        assert len(taken) == steps and taken[0] == 299 and taken[-1] == 0
    assert respaced_timesteps(4, used=1000) == [999, 666, 333, 0]
    for steps in (0, -1, 301):
        with pytest.raises(ValueError, match="steps"):
            respaced_timesteps(steps)


@pytest.mark.parametrize("steps", [2, 5])
def test_respaced_coefficients_match_reference_table(alphas, steps):
    timesteps = respaced_timesteps(steps)
    coefs = respaced_coefficients(alphas, timesteps)
    assert all(c.dtype == torch.float64 and c.shape == (steps,) for c in coefs.values())
    for k, (tau, *row) in enumerate(TABLE[steps]):
        assert timesteps[k] == tau
        for name, value in zip(COLUMNS, row, strict=True):
            assert coefs[name][k].item() == pytest.approx(value, abs=1e-4), (tau, name)
    # c1 + c2·√ᾱ′ = √ᾱ′_prev (the posterior mean of a clean x0 is its noised version)
    torch.testing.assert_close(
        coefs["c1"] + coefs["c2"] * coefs["alphas_cumprod"].sqrt(),
        coefs["alphas_cumprod_prev"].sqrt(),
    )


def reference_sampler(denoise, x, alphas, timesteps, generator):
    """The respaced DDPM loop of reference §4, written from the coefficient table."""
    coefs = respaced_coefficients(alphas, timesteps)
    for k, t in enumerate(timesteps):
        a = coefs["alphas_cumprod"][k].item()
        eps = denoise(x, torch.full((x.shape[0],), t))
        x0_hat = x / math.sqrt(a) - math.sqrt(1 / a - 1) * eps
        x = coefs["c1"][k].item() * x0_hat + coefs["c2"][k].item() * x
        if t > 0:
            x = x + coefs["sigmas"][k].item() * torch.randn(x.shape, generator=generator)
    return x0_hat


class ToyDenoiser(torch.nn.Module):
    """ε̂ = w·tanh(conv(x)) + b·t/300: differentiable and time-dependent."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.b = torch.nn.Parameter(torch.tensor(0.3))
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(t.tolist())
        return torch.tanh(self.conv(x)) + self.b * t.view(-1, 1, 1, 1) / 300


@pytest.mark.parametrize("steps", [2, 5])
def test_sampler_matches_reference_loop(alphas, steps):
    timesteps = respaced_timesteps(steps)
    denoiser = ToyDenoiser()
    x_start = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = respaced_ddpm_sample(
            denoiser, x_start, alphas, timesteps, torch.Generator().manual_seed(7)
        )
        # the denoiser gets the original timesteps τ_k, one per batch element
        assert denoiser.seen == [[t, t] for t in timesteps]
        expected = reference_sampler(
            denoiser, x_start, alphas, timesteps, torch.Generator().manual_seed(7)
        )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_sampler_recovers_x0_with_the_true_noise(alphas):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 8, 8, generator=gen)

    def true_eps(x, t):
        a = alphas[t].view(-1, 1, 1, 1).float()
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    for steps in (2, 5):
        x_start = q_sample(x0, torch.randn(x0.shape, generator=gen), alphas[299])
        out = respaced_ddpm_sample(true_eps, x_start, alphas, respaced_timesteps(steps), gen)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_sampler_gradients_and_seeding(alphas):
    denoiser = ToyDenoiser()
    timesteps = respaced_timesteps(5)
    x_start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x_start.requires_grad_(True)
    out = respaced_ddpm_sample(
        denoiser, x_start, alphas, timesteps, torch.Generator().manual_seed(5)
    )
    out.square().mean().backward()
    assert x_start.grad is not None and x_start.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.parameters())

    def run(seed):
        with torch.no_grad():
            return respaced_ddpm_sample(
                denoiser, x_start, alphas, timesteps, torch.Generator().manual_seed(seed)
            )

    assert torch.equal(run(5), out.detach())
    assert torch.equal(run(5), run(5))
    assert (run(6) - run(5)).abs().max() > 1e-3


def test_sampler_under_autocast(alphas):
    denoiser = ToyDenoiser()
    timesteps = respaced_timesteps(5)
    x_start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = respaced_ddpm_sample(
            denoiser, x_start, alphas, timesteps, torch.Generator().manual_seed(2)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = respaced_ddpm_sample(
                denoiser, x_start, alphas, timesteps, torch.Generator().manual_seed(2)
            )
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=0, atol=0.1)


def test_sampler_rejects_bad_timesteps(alphas):
    x = torch.zeros(1, 4, 8, 8)
    for timesteps in ([], [0, 299], [1000], [5, -1]):
        with pytest.raises(ValueError):
            respaced_ddpm_sample(lambda x, t: x, x, alphas, timesteps)

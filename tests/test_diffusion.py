"""Tests for the diffusion schedules (CDC's constants) and the DDIM sampler."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar

from modules.diffusion import (
    cosine_alphas_cumprod,
    ddim_indices,
    ddim_sample,
    eps_from_x0,
    linear_alphas_cumprod,
    make_alphas_cumprod,
    q_sample,
    snr,
    x0_from_eps,
)

N_X = 8193  # CDC's x-parameterised model
N_EPS = 20000  # CDC's ε-parameterised model


def cosine_reference(num_steps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's ᾱ from the formula, in numpy float64."""
    u = np.arange(num_steps + 1) / num_steps
    f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.cumprod(1 - betas)


# ᾱ of the cosine schedule at N = 8193, computed once from the formula.
COSINE_PINNED = {
    0: 0.9999952212099313,
    2146: 0.8332412264134588,
    4096: 0.49374848187628473,
    8192: 3.618264185128013e-11,
}


@pytest.fixture(scope="module")
def cosine() -> torch.Tensor:
    return cosine_alphas_cumprod(N_X)


def test_cosine_matches_formula(cosine):
    assert cosine.dtype == torch.float64 and cosine.shape == (N_X,)
    reference = cosine_reference(N_X)
    np.testing.assert_allclose(cosine.numpy(), reference, rtol=1e-9, atol=0)
    for index, value in COSINE_PINNED.items():
        assert cosine[index].item() == pytest.approx(reference[index], rel=1e-9)
        assert cosine[index].item() == pytest.approx(value, rel=1e-9)
    # Only the last β is clipped: before it ᾱ_i = f(u_{i+1})/f(0), after it ᾱ_{N−1} = 1e-3·ᾱ_{N−2}.
    f = np.cos((np.arange(1, N_X) / N_X + 0.008) / 1.008 * np.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(cosine[:-1].numpy(), f / f0, rtol=1e-9)
    assert cosine[-1].item() == pytest.approx(1e-3 * cosine[-2].item(), rel=1e-9)


def test_cosine_matches_diffusers_to_float32(cosine):
    # diffusers' betas_for_alpha_bar is the same schedule, but returns float32 β.
    betas = betas_for_alpha_bar(N_X, max_beta=0.999, alpha_transform_type="cosine").double()
    np.testing.assert_allclose(torch.cumprod(1 - betas, 0).numpy(), cosine.numpy(), rtol=2e-5)


def test_cosine_snr_falls_below_5_at_2146(cosine):
    ratio = snr(cosine)
    assert ratio[2145] >= 5 > ratio[2146]
    assert int(torch.nonzero(ratio < 5)[0]) == 2146
    assert ratio[2146].item() == pytest.approx(4.996685982348273, rel=1e-9)


def test_linear_schedule():
    alphas = make_alphas_cumprod("linear", N_EPS)
    betas = np.linspace(5e-6, 1e-3, N_EPS)
    assert alphas.dtype == torch.float64 and alphas.shape == (N_EPS,)
    np.testing.assert_allclose(alphas.numpy(), np.cumprod(1 - betas), rtol=1e-9)
    assert alphas[-1].item() == pytest.approx(4.30e-5, rel=1e-2)
    assert alphas[-1].item() == pytest.approx(4.3041239575902834e-05, rel=1e-9)
    torch.testing.assert_close(alphas, linear_alphas_cumprod(N_EPS, 5e-6, 1e-3))


def test_make_alphas_cumprod_names(cosine):
    torch.testing.assert_close(make_alphas_cumprod("cosine", N_X), cosine)
    with pytest.raises(ValueError, match="cosine, linear"):
        make_alphas_cumprod("sigmoid", 10)


@pytest.mark.parametrize("num_steps", [17, 33, 65, 129])
def test_ddim_indices_integral_strides(num_steps):
    stride = 8192 // (num_steps - 1)
    expected = torch.arange(0, N_X, stride)
    indices = ddim_indices(N_X, num_steps, require_integral=True)
    assert indices.dtype == torch.long
    assert torch.equal(indices, expected)
    assert torch.equal(indices, torch.from_numpy(np.linspace(0, N_X - 1, num_steps)).long())


def test_ddim_indices_17_is_stride_512():
    assert torch.equal(ddim_indices(N_X, 17), torch.arange(0, 8193, 512))


@pytest.mark.parametrize(
    ("num_train_steps", "num_steps"), [(8193, 65), (20000, 200), (20000, 500)]
)
def test_ddim_indices_match_cdc_float32_linspace(num_train_steps, num_steps):
    cdc = torch.linspace(0, num_train_steps - 1, num_steps).long()
    assert torch.equal(ddim_indices(num_train_steps, num_steps), cdc)


def test_ddim_indices_truncate_non_integral():
    exact = np.floor(np.arange(200) * (N_EPS - 1) / 199).astype(np.int64)
    assert torch.equal(ddim_indices(N_EPS, 200), torch.from_numpy(exact))


def test_ddim_indices_edge_cases():
    assert torch.equal(ddim_indices(N_X, 1), torch.tensor([8192]))
    assert torch.equal(ddim_indices(N_X, 1, require_integral=True), torch.tensor([8192]))
    assert torch.equal(ddim_indices(5, 5), torch.arange(5))
    with pytest.raises(ValueError, match=r"\b9 and 17\b"):
        ddim_indices(N_X, 16, require_integral=True)
    for bad in (0, N_X + 1):
        with pytest.raises(ValueError, match="num_steps"):
            ddim_indices(N_X, bad)


def test_x0_eps_conversions_invert():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.9, 0.3, 1e-3], dtype=torch.float64).view(3, 1, 1, 1)
    x_t = q_sample(x0, eps, alpha)
    torch.testing.assert_close(x_t, alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps)
    torch.testing.assert_close(x0_from_eps(x_t, eps, alpha), x0)
    torch.testing.assert_close(eps_from_x0(x_t, x0, alpha), eps)
    torch.testing.assert_close(x0_from_eps(x_t, eps_from_x0(x_t, x0, 0.3), 0.3), x0)


def test_conversions_keep_state_dtype():
    x = torch.ones(2, 1, 2, 2)
    alpha = torch.tensor([0.5, 0.25], dtype=torch.float64).view(2, 1, 1, 1)
    assert q_sample(x, x, alpha).dtype == torch.float32
    assert x0_from_eps(x, x, alpha).dtype == torch.float32


def make_data(alpha_last: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    return x0, noise, q_sample(x0, noise, alpha_last)


def test_ddim_x0_oracle_recovers_x0(cosine):
    indices = ddim_indices(N_X, 17)
    x0, _, x_start = make_data(cosine[-1].item())
    seen = []

    def denoise(x_t, index):
        seen.append(index)
        alpha = cosine[index].view(-1, 1, 1, 1)
        return x0, eps_from_x0(x_t, x0, alpha)

    assert torch.equal(ddim_sample(denoise, cosine, indices, x_start), x0)
    assert all(i.dtype == torch.long and i.shape == (2,) for i in seen)
    assert [int(i[0]) for i in seen] == indices.flip(0).tolist()


@pytest.mark.parametrize("num_steps", [1, 17])
def test_ddim_noise_oracle_follows_forward_process(cosine, num_steps):
    # A denoiser that knows the true noise keeps every state on x_t = q_sample(x0, ε, ᾱ_t).
    indices = ddim_indices(N_X, num_steps)
    x0, noise, x_start = make_data(cosine[-1].item())
    states = {}

    def denoise(x_t, index):
        states[int(index[0])] = x_t
        return x0_from_eps(x_t, noise, cosine[index].view(-1, 1, 1, 1)), noise

    out = ddim_sample(denoise, cosine, indices, x_start)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    for index, x_t in states.items():
        torch.testing.assert_close(x_t, q_sample(x0, noise, cosine[index]), rtol=0, atol=1e-9)


def shrinking_denoiser(alphas_cumprod):
    def denoise(x_t, index):
        x0_hat = torch.tanh(0.5 * x_t)
        return x0_hat, eps_from_x0(x_t, x0_hat, alphas_cumprod[index].view(-1, 1, 1, 1))

    return denoise


def test_ddim_stochastic_is_seeded(cosine):
    indices = ddim_indices(N_X, 9)
    denoise = shrinking_denoiser(cosine)
    x_start = 0.8 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))

    def run(seed: int, eta: float = 1.0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return ddim_sample(denoise, cosine, indices, x_start, eta=eta, generator=generator)

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    assert torch.equal(run(0, eta=0.0), run(1, eta=0.0))
    assert run(0).dtype == torch.float32


def test_ddim_deterministic_draws_no_noise(cosine):
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    x_start = torch.zeros(1, 3, 4, 4)
    ddim_sample(shrinking_denoiser(cosine), cosine, ddim_indices(N_X, 5), x_start, 0.0, generator)
    assert torch.equal(generator.get_state(), state)


def test_ddim_single_index_returns_denoiser_x0(cosine):
    x_start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))

    def denoise(x_t, index):
        assert index.tolist() == [8192, 8192]
        return 0.3 * x_t + 1, torch.zeros_like(x_t)

    out = ddim_sample(denoise, cosine, ddim_indices(N_X, 1), x_start, eta=1.0)
    assert torch.equal(out, 0.3 * x_start + 1)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers_on_uniform_grid(eta):
    # On a grid whose stride is N//S, diffusers' DDIMScheduler visits the same indices.
    num_train, num_steps = 1000, 10
    scheduler = DDIMScheduler(
        num_train_timesteps=num_train,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(num_steps)
    alphas = scheduler.alphas_cumprod
    indices = torch.arange(num_steps) * (num_train // num_steps)
    assert torch.equal(scheduler.timesteps.flip(0), indices)

    def eps_model(x_t, t):
        return 0.5 * x_t + 0.1 * torch.sin(x_t + t / num_train)

    x_start = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    x = x_start
    generator = torch.Generator().manual_seed(5)
    for t in scheduler.timesteps:
        x = scheduler.step(eps_model(x, t), t, x, eta=eta, generator=generator).prev_sample

    def denoise(x_t, index):
        eps = eps_model(x_t, index.view(-1, 1, 1, 1))
        return x0_from_eps(x_t, eps, alphas[index].view(-1, 1, 1, 1)), eps

    generator = torch.Generator().manual_seed(5)
    out = ddim_sample(denoise, alphas, indices, x_start, eta=eta, generator=generator)
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


def test_ddim_rejects_bad_indices(cosine):
    x = torch.zeros(1, 1, 2, 2)

    def denoise(x_t, index):
        return x_t, x_t

    for bad in (
        torch.tensor([512, 0]),
        torch.tensor([0, 8193]),
        torch.tensor([], dtype=torch.long),
    ):
        with pytest.raises(ValueError, match="indices"):
            ddim_sample(denoise, cosine, bad, x)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(denoise, cosine, torch.tensor([0]), x, eta=-1.0)

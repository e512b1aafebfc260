"""The mean-scale hyperprior codec: exact round trips in a separate instance, fp32 entropy path."""

from __future__ import annotations

import pytest
import torch
from compressai.models.base import get_scale_table
from torch import nn

from modules.entropy import mean_scale_hyperprior


def build(seed: int = 0):
    torch.manual_seed(seed)
    codec = mean_scale_hyperprior(
        h_a=nn.Sequential(nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1)),
        h_s=nn.Sequential(nn.ConvTranspose2d(6, 16, 4, stride=2, padding=1), nn.Conv2d(16, 16, 1)),
        z_channels=6,
        entropy_bottleneck_filters=(3, 3, 3),
        scale_bound=0.1,
    )
    return codec


def updated(codec):
    codec.eval()
    codec.hyper.entropy_bottleneck.update(force=True)
    codec.y.gaussian_conditional.update_scale_table(get_scale_table(0.1), force=True)
    return codec


def test_configuration_is_what_was_asked():
    codec = build()
    assert codec.hyper.entropy_bottleneck.filters == (3, 3, 3)
    assert codec.y.gaussian_conditional.lower_bound_scale.bound.item() == pytest.approx(0.1)


def test_round_trip_is_exact_in_a_separate_instance():
    encoder = updated(build(0))
    decoder = build(1)
    decoder.load_state_dict(encoder.state_dict())
    updated(decoder)
    y = 3 * torch.randn(2, 8, 16, 12)
    with torch.no_grad():
        expected = encoder(y)["y_hat"]
        out = encoder.compress(y)
        decoded = decoder.decompress(out["strings"], out["shape"])["y_hat"]
    assert torch.equal(decoded, expected)


def test_entropy_path_is_fp32_under_autocast():
    codec = updated(build())
    y = torch.randn(1, 8, 16, 16).bfloat16()
    with torch.no_grad():
        reference = codec(y.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = codec(y)
    for key in ("y", "z"):
        assert autocast["likelihoods"][key].dtype == torch.float32
        assert torch.equal(autocast["likelihoods"][key], reference["likelihoods"][key])

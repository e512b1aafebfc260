"""Tests for the space-channel context codec and the fp32 entropy path."""

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from compressai.models import Elic2022Chandelier, Elic2022Official, get_scale_table
from torch import nn

from modules.entropy import SpaceChannelContextCodec

GROUPS = [2, 2, 4, 8]
SIDE = 16
PREFIX = "latent_codec.y."


def make_networks(groups: list[int], side: int) -> tuple[dict, list, list]:
    channel_context = {
        f"y{k}": nn.Sequential(
            nn.Conv2d(sum(groups[:k]), 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 2 * groups[k], 3, padding=1),
        )
        for k in range(1, len(groups))
    }
    spatial_context = [
        CheckerboardMaskedConv2d(g, 2 * g, kernel_size=5, padding=2) for g in groups
    ]
    param_aggregation = [
        nn.Sequential(
            nn.Conv2d(2 * g + (k > 0) * 2 * g + side, 16, 1),
            nn.ReLU(),
            nn.Conv2d(16, 2 * g, 1),
        )
        for k, g in enumerate(groups)
    ]
    return channel_context, spatial_context, param_aggregation


def make_codec(
    anchor_parity: str = "even", seed: int = 0, update: bool = True
) -> SpaceChannelContextCodec:
    torch.manual_seed(seed)
    codec = SpaceChannelContextCodec(GROUPS, *make_networks(GROUPS, SIDE), anchor_parity)
    if update:
        codec.gaussian_conditional.update_scale_table(get_scale_table(), force=True)
    return codec.eval()


def make_compressai_codec(anchor_parity: str) -> ChannelGroupsLatentCodec:
    torch.manual_seed(0)
    channel_context, spatial_context, param_aggregation = make_networks(GROUPS, SIDE)
    return ChannelGroupsLatentCodec(
        groups=GROUPS,
        channel_context=channel_context,
        latent_codec={
            f"y{k}": CheckerboardLatentCodec(
                latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
                entropy_parameters=param_aggregation[k],
                context_prediction=spatial_context[k],
                anchor_parity=anchor_parity,
            )
            for k in range(len(GROUPS))
        },
    ).eval()


def make_inputs(channels: int = sum(GROUPS), side: int = SIDE) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    y = 4 * torch.randn(2, channels, 8, 12, generator=generator)
    side_params = torch.randn(2, side, 8, 12, generator=generator)
    return y, side_params


@pytest.mark.parametrize("anchor_parity", ["even", "odd"])
def test_decompress_equals_forward_bit_exactly(anchor_parity: str) -> None:
    encoder = make_codec(anchor_parity, seed=0)
    decoder = make_codec(anchor_parity, seed=1, update=False)
    decoder.load_state_dict(encoder.state_dict())
    y, side_params = make_inputs()
    with torch.no_grad():
        forward = encoder(y, side_params)
        compressed = encoder.compress(y, side_params)
        decoded = decoder.decompress(compressed["strings"], compressed["shape"], side_params)
    assert len(compressed["strings"]) == 1
    assert len(compressed["strings"][0]) == y.size(0)
    assert all(isinstance(s, bytes) for s in compressed["strings"][0])
    assert compressed["shape"] == (8, 12)
    assert torch.equal(compressed["y_hat"], forward["y_hat"])
    assert torch.equal(decoded["y_hat"], forward["y_hat"])


@pytest.mark.parametrize("anchor_parity", ["even", "odd"])
def test_forward_matches_compressai_checkerboard_groups(anchor_parity: str) -> None:
    reference = make_compressai_codec(anchor_parity)
    codec = SpaceChannelContextCodec.from_compressai(reference).eval()
    y, side_params = make_inputs()
    with torch.no_grad():
        expected = reference(y, side_params)
        actual = codec(y, side_params)
    torch.testing.assert_close(actual["y_hat"], expected["y_hat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        actual["likelihoods"]["y"], expected["likelihoods"]["y"], atol=1e-5, rtol=0
    )


def test_matches_elic2022_official_and_remapped_state_dict() -> None:
    torch.manual_seed(0)
    net = Elic2022Official(N=16, M=32, groups=[4, 4, 8, 16]).eval()
    net.update(force=True)
    codec = SpaceChannelContextCodec.from_compressai(net.latent_codec["y"]).eval()
    y, side_params = make_inputs(channels=32, side=32)
    with torch.no_grad():
        expected = net.latent_codec["y"](y, side_params)
        actual = codec(y, side_params)
    torch.testing.assert_close(actual["y_hat"], expected["y_hat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        actual["likelihoods"]["y"], expected["likelihoods"]["y"], atol=1e-5, rtol=0
    )

    state_dict = net.state_dict()
    remapped = SpaceChannelContextCodec.remap_compressai_state_dict(state_dict, PREFIX)
    assert remapped["g_a.0.weight"] is state_dict["g_a.0.weight"]
    own = {k[len(PREFIX) :]: v for k, v in remapped.items() if k.startswith(PREFIX)}
    torch.manual_seed(1)
    fresh = SpaceChannelContextCodec.from_compressai(
        Elic2022Official(N=16, M=32, groups=[4, 4, 8, 16]).latent_codec["y"]
    ).eval()
    fresh.load_state_dict(own, strict=True)
    with torch.no_grad():
        reloaded = fresh(y, side_params)
        compressed = codec.compress(y, side_params)
        decoded = fresh.decompress(compressed["strings"], compressed["shape"], side_params)
    assert torch.equal(reloaded["y_hat"], actual["y_hat"])
    assert torch.equal(reloaded["likelihoods"]["y"], actual["likelihoods"]["y"])
    assert torch.equal(decoded["y_hat"], actual["y_hat"])


def test_matches_elic2022_chandelier_first_and_previous_group_context() -> None:
    """Chandelier's layout: channel context from the first and the latest group, parameter
    networks chunked (means, scales); the all-groups context reads other inputs."""
    torch.manual_seed(0)
    net = Elic2022Chandelier(N=16, M=32, groups=[4, 4, 8, 16]).eval()
    reference = net.latent_codec["y"]
    codec = SpaceChannelContextCodec.from_compressai(reference, "first_and_previous").eval()
    assert codec.chunks == ("means", "scales")
    codec.gaussian_conditional.update_scale_table(get_scale_table(), force=True)
    y, side_params = make_inputs(channels=32, side=64)
    with torch.no_grad():
        expected = reference(y, side_params)
        actual = codec(y, side_params)
        compressed = codec.compress(y, side_params)
        decoded = codec.decompress(compressed["strings"], compressed["shape"], side_params)
    torch.testing.assert_close(actual["y_hat"], expected["y_hat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        actual["likelihoods"]["y"], expected["likelihoods"]["y"], atol=1e-5, rtol=0
    )
    assert torch.equal(decoded["y_hat"], actual["y_hat"])
    # reading every previous group instead feeds group 3's context 16 channels, not 12
    everything = SpaceChannelContextCodec.from_compressai(reference).eval()
    with pytest.raises(RuntimeError, match="channels"):
        everything(y, side_params)
    swapped = SpaceChannelContextCodec.from_compressai(reference, "first_and_previous")
    swapped.chunks = ("scales", "means")
    with torch.no_grad():
        wrong = swapped.eval()(y, side_params)["likelihoods"]["y"]
    assert (wrong - expected["likelihoods"]["y"]).abs().max() > 1e-3


def test_remap_rejects_unknown_keys_under_prefix() -> None:
    state_dict = {
        f"{PREFIX}latent_codec.y0.y.entropy_parameters.weight": torch.zeros(1),
        "g_s.0.weight": torch.zeros(1),
    }
    with pytest.raises(KeyError, match=r"latent_codec\.y\.latent_codec\.y0\.y\.entropy"):
        SpaceChannelContextCodec.remap_compressai_state_dict(state_dict, PREFIX)


def test_real_rate_matches_estimate() -> None:
    groups, side, scale, mean = [8, 8, 16, 32], 4, 3.0, 0.3
    channel_context, spatial_context, _ = make_networks(groups, side)
    param_aggregation = []
    for k, g in enumerate(groups):
        conv = nn.Conv2d(2 * g + (k > 0) * 2 * g + side, 2 * g, 1)
        nn.init.zeros_(conv.weight)
        nn.init.constant_(conv.bias[:g], scale)
        nn.init.constant_(conv.bias[g:], mean)
        param_aggregation.append(conv)
    codec = SpaceChannelContextCodec(groups, channel_context, spatial_context, param_aggregation)
    codec.gaussian_conditional.update()
    codec.eval()
    generator = torch.Generator().manual_seed(2)
    y = mean + scale * torch.randn(1, sum(groups), 32, 32, generator=generator)
    side_params = torch.randn(1, side, 32, 32, generator=generator)
    with torch.no_grad():
        estimate = -codec(y, side_params)["likelihoods"]["y"].log2().sum().item()
        (string,) = codec.compress(y, side_params)["strings"][0]
    assert abs(8 * len(string) - estimate) <= 0.03 * estimate + 64


def test_training_forward_reaches_every_parameter() -> None:
    codec = make_codec().train()
    y, side_params = make_inputs()
    y.requires_grad_(True)
    side_params.requires_grad_(True)
    out = codec(y, side_params)
    loss = -out["likelihoods"]["y"].log2().sum() + out["y_hat"].square().sum()
    loss.backward()
    for name, parameter in codec.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert side_params.grad is not None and side_params.grad.abs().sum() > 0


def test_autocast_keeps_entropy_path_in_fp32() -> None:
    codec = make_codec()
    y, side_params = make_inputs()
    with torch.no_grad():
        expected = codec(y, side_params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = codec(y, side_params)
    assert actual["likelihoods"]["y"].dtype == torch.float32
    assert actual["y_hat"].dtype == torch.float32
    assert torch.equal(actual["likelihoods"]["y"], expected["likelihoods"]["y"])
    assert torch.equal(actual["y_hat"], expected["y_hat"])


def test_composes_inside_compressai_hyperprior() -> None:
    torch.manual_seed(0)
    h_a = nn.Conv2d(sum(GROUPS), 8, 3, stride=2, padding=1)
    h_s = nn.ConvTranspose2d(8, SIDE, 4, stride=2, padding=1)
    hyperprior = HyperpriorLatentCodec(
        latent_codec={
            "y": make_codec(),
            "hyper": HyperLatentCodec(EntropyBottleneck(8), h_a, h_s, quantizer="ste"),
        }
    ).eval()
    hyperprior["hyper"].entropy_bottleneck.update(force=True)
    y, _ = make_inputs()
    with torch.no_grad():
        forward = hyperprior(y)
        compressed = hyperprior.compress(y)
        decoded = hyperprior.decompress(compressed["strings"], compressed["shape"])
    assert len(compressed["strings"]) == 2  # y and z
    assert torch.equal(decoded["y_hat"], forward["y_hat"])


def test_rejects_odd_latents_and_missing_cdfs() -> None:
    y, side_params = make_inputs()
    with pytest.raises(ValueError, match="even"):
        make_codec()(y[..., :11], side_params[..., :11])
    with pytest.raises(ValueError, match="update"):
        make_codec(update=False).compress(y, side_params)

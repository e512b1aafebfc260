"""Entropy model for a few-channel latent (the SD VAE's 4 channels at H/8): a hyperprior plus
the shared space-channel (checkerboard and channel-group) context model."""

from __future__ import annotations

from collections.abc import Sequence

from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import HyperLatentCodec
from torch import nn

from modules.entropy import HyperpriorCodec, SpaceChannelContextCodec


def checkerboard_hyperprior(
    channels: int = 4,
    groups: Sequence[int] = (2, 2),
    hyper_channels: int = 128,
    side_channels: int = 128,
    context_channels: int = 64,
    scale_bound: float = 0.11,
) -> HyperpriorCodec:
    """`HyperpriorCodec` of a `channels`-channel latent ẑ with checkerboard and channel context.

    h_a: conv3×3 C→N, GELU, two 5×5 stride-2 convs (N = `hyper_channels`) -> z at 1/4 of the
    latent's resolution, coded by an EntropyBottleneck; h_s mirrors it with transposed convs
    and ends in a 3×3 conv to `side_channels` maps at the latent's resolution. The latent is
    split into channel `groups`, each coded in two checkerboard passes
    (`SpaceChannelContextCodec`): spatial context 5×5 conv→GELU→1×1 conv over the decoded
    anchors, channel context three 5×5 convs over all previous groups, and 1×1 parameter
    networks to (scales, means), all `context_channels` wide. ẑ is rounded around the predicted
    means (straight-through in training, additive noise for the training rate), as CompressAI
    does.
    """
    groups = [int(g) for g in groups]
    if sum(groups) != channels:
        raise ValueError(f"groups {groups} must sum to the latent's {channels} channels")
    n, k = hyper_channels, context_channels
    h_a = nn.Sequential(
        nn.Conv2d(channels, n, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(n, n, 5, stride=2, padding=2),
        nn.GELU(),
        nn.Conv2d(n, n, 5, stride=2, padding=2),
    )
    h_s = nn.Sequential(
        nn.ConvTranspose2d(n, n, 5, stride=2, padding=2, output_padding=1),
        nn.GELU(),
        nn.ConvTranspose2d(n, n, 5, stride=2, padding=2, output_padding=1),
        nn.GELU(),
        nn.Conv2d(n, side_channels, 3, padding=1),
    )

    def spatial(g: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(g, k, 5, padding=2), nn.GELU(), nn.Conv2d(k, 2 * g, 1))

    def channel(previous: int, g: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(previous, k, 5, padding=2),
            nn.GELU(),
            nn.Conv2d(k, k, 5, padding=2),
            nn.GELU(),
            nn.Conv2d(k, 2 * g, 5, padding=2),
        )

    def parameters(inputs: int, g: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(inputs, 2 * k, 1),
            nn.GELU(),
            nn.Conv2d(2 * k, k, 1),
            nn.GELU(),
            nn.Conv2d(k, 2 * g, 1),
        )

    context = SpaceChannelContextCodec(
        groups,
        channel_context={
            f"y{i}": channel(sum(groups[:i]), groups[i]) for i in range(1, len(groups))
        },
        spatial_context=[spatial(g) for g in groups],
        param_aggregation=[
            parameters(2 * g + (2 * g if i else 0) + side_channels, g)
            for i, g in enumerate(groups)
        ],
        scale_bound=scale_bound,
    )
    hyper = HyperLatentCodec(EntropyBottleneck(n), h_a=h_a, h_s=h_s, quantizer="ste")
    return HyperpriorCodec(latent_codec={"y": context, "hyper": hyper})

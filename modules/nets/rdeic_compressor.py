"""The compression module of RDEIC (Li et al.): analysis/synthesis transforms on the SD VAE
feature, a vector-quantised hyper-latent and the space-channel context model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compressai.layers import ResidualBlock, conv1x1, conv3x3
from torch import Tensor, nn

from modules.entropy.precision import entropy_fp32
from modules.entropy.space_channel import SpaceChannelContextCodec
from modules.entropy.vector_quantizer import VectorQuantizer

#: negative slopes of the two activations of the strided and sub-pixel blocks (official RDEIC:
#: PyTorch's default 0.01, then 0.1; the plain residual blocks use 0.01 twice)
RESAMPLING_SLOPES = (0.01, 0.1)
#: parameter networks of the context model: one per group for both checkerboard passes, or the
#: official code's separate anchor and non-anchor networks
CONTEXTS = ("shared", "official")


class StridedResidualBlock(nn.Module):
    """RBS: conv3×3 (stride 2)–LeakyReLU(0.01)–conv3×3–LeakyReLU(0.1), 1×1 stride-2 skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(in_ch, out_ch, stride=2),
            nn.LeakyReLU(RESAMPLING_SLOPES[0]),
            conv3x3(out_ch, out_ch),
            nn.LeakyReLU(RESAMPLING_SLOPES[1]),
        )
        self.skip = conv1x1(in_ch, out_ch, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class SubpelResidualBlock(nn.Module):
    """RBU: 2× sub-pixel upsampling (1×1 conv to 4·out, PixelShuffle) in the main and skip
    paths; the main path continues LeakyReLU(0.01)–conv3×3–LeakyReLU(0.1)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv1x1(in_ch, 4 * out_ch),
            nn.PixelShuffle(2),
            nn.LeakyReLU(RESAMPLING_SLOPES[0]),
            conv3x3(out_ch, out_ch),
            nn.LeakyReLU(RESAMPLING_SLOPES[1]),
        )
        self.skip = nn.Sequential(conv1x1(in_ch, 4 * out_ch), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


def _channel_context(in_ch: int, out_ch: int, channels: int) -> nn.Sequential:
    """5×5 convs in → 224 → 128 → out with GELU (widths for 256 latent channels, scaled)."""
    hidden = (max(1, 224 * channels // 256), max(1, 128 * channels // 256))
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden[0], 5, padding=2),
        nn.GELU(),
        nn.Conv2d(hidden[0], hidden[1], 5, padding=2),
        nn.GELU(),
        nn.Conv2d(hidden[1], out_ch, 5, padding=2),
    )


def _param_aggregation(in_ch: int, out_ch: int) -> nn.Sequential:
    """1×1 convs in → 5/3·out → 4/3·out → out with GELU."""
    return nn.Sequential(
        conv1x1(in_ch, out_ch * 5 // 3),
        nn.GELU(),
        conv1x1(out_ch * 5 // 3, out_ch * 4 // 3),
        nn.GELU(),
        conv1x1(out_ch * 4 // 3, out_ch),
    )


class RDEICCompressor(nn.Module):
    """SD VAE feature (``feature_channels`` at H/8) -> control hint and relay start z_c.

    g_a: feature -> y (``channels``, H/16); h_a: y -> z (``channels``, H/64); z is vector
    quantised (``num_codes`` codes, one index per position, see ``VectorQuantizer``); h_s:
    ẑ -> 2·``channels`` hyper parameters at H/16, in fp32; the space-channel context model
    codes y given them; g_s: ŷ -> hint (``hint_channels``, H/8), the control module's input;
    ``out``: conv3×3 hint -> z_c (``latent_channels``, H/8). RB is CompressAI's
    ``ResidualBlock`` (conv3×3–LeakyReLU–conv3×3–LeakyReLU + skip), RBS/RBU its stride-2 and
    sub-pixel versions above. The feature's height and width must be multiples of 8.

    The context model is the shared ``SpaceChannelContextCodec`` with ``groups``, anchors
    at parity "odd" (as the official code), channel context over all previous groups, and a
    plain 5×5 conv as spatial context: the codec feeds it the decoded anchors with zeros at
    the non-anchors and reads it at non-anchors only, so it equals CompressAI's
    ``CheckerboardMaskedConv2d`` with the same weights. ``context`` chooses the parameter
    networks: "shared" (default, for training from scratch): each group has one network for
    both passes, as in CompressAI, with a zero spatial context for anchors (0.74 M parameters
    at the paper's widths); "official": separate networks for the anchor pass (input
    [channel ctx,] hyper) and the non-anchor pass (input spatial ctx, [channel ctx,] hyper), as
    the official SCCTX (1.40 M parameters), which is the layout the released checkpoints load
    into (``scripts/import_official.py rdeic``).

    ``likelihoods`` holds y's and, as "z", the VQ coder's probability of each index: the index
    cost carries no gradient, so a loss on all likelihoods trains exactly as the official loss
    on y alone, while the reported bpp counts the indices.
    """

    def __init__(
        self,
        feature_channels: int = 512,
        channels: int = 256,
        groups: Sequence[int] = (8, 8, 8, 8, 16, 16, 32, 32, 64, 64),
        num_codes: int = 16384,
        latent_channels: int = 4,
        hint_channels: int = 256,
        vq_prior: str = "uniform",
        context: str = "shared",
    ) -> None:
        super().__init__()
        groups = [int(g) for g in groups]
        if sum(groups) != channels:
            raise ValueError(f"groups {groups} must sum to channels={channels}")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        if channels % 2:
            raise ValueError(f"channels must be even, got {channels}")
        c = channels
        self.feature_channels = feature_channels

        self.g_a = nn.Sequential(
            ResidualBlock(feature_channels, c),
            *(ResidualBlock(c, c) for _ in range(3)),
            StridedResidualBlock(c, c),
            *(ResidualBlock(c, c) for _ in range(3)),
            conv3x3(c, c),
        )
        self.h_a = nn.Sequential(
            ResidualBlock(c, c),
            ResidualBlock(c, c),
            StridedResidualBlock(c, c),
            StridedResidualBlock(c, c),
        )
        self.vq = VectorQuantizer(num_codes, c, prior=vq_prior)
        self.h_s = nn.Sequential(
            SubpelResidualBlock(c, c),
            SubpelResidualBlock(c, c),
            ResidualBlock(c, c * 3 // 2),
            ResidualBlock(c * 3 // 2, 2 * c),
        )
        anchor_networks = None  # official: anchors read [channel ctx,] hyper, no spatial ctx
        if context == "official":
            anchor_networks = [
                _param_aggregation((2 * g if k else 0) + 2 * c, 2 * g)
                for k, g in enumerate(groups)
            ]
        self.latent_codec = SpaceChannelContextCodec(
            groups,
            channel_context={
                f"y{k}": _channel_context(sum(groups[:k]), 2 * groups[k], c)
                for k in range(1, len(groups))
            },
            spatial_context=[nn.Conv2d(g, 2 * g, 5, padding=2) for g in groups],
            param_aggregation=[
                _param_aggregation(2 * g + (2 * g if k else 0) + 2 * c, 2 * g)
                for k, g in enumerate(groups)
            ],
            anchor_param_aggregation=anchor_networks,
            anchor_parity="odd",
            scale_bound=0.11,
        )
        self.g_s = nn.Sequential(
            conv3x3(c, c),
            *(ResidualBlock(c, c) for _ in range(3)),
            SubpelResidualBlock(c, hint_channels),
            *(ResidualBlock(hint_channels, hint_channels) for _ in range(4)),
        )
        self.out = conv3x3(hint_channels, latent_channels)

    def forward(self, feature: Tensor) -> dict[str, Any]:
        """Training/estimation pass (STE quantisation of y and z; y likelihoods with additive
        noise in training mode, dead-code re-initialisation of the codebook in training)."""
        self._check_feature(feature)
        y = self.g_a(feature)
        vq = self.vq(self.h_a(y))
        out = self.latent_codec(y, self._hyper_params(vq["z_q"]))
        hint = self.g_s(out["y_hat"])
        return {
            "hint": hint,
            "z_c": self.out(hint),
            "likelihoods": {**out["likelihoods"], "z": self.vq.likelihoods(vq["indices"])},
            "vq_loss": vq["loss"],
            "indices": vq["indices"],
        }

    def compress(self, feature: Tensor) -> dict[str, Any]:
        """Entropy-code a feature batch: strings [[y per item], [z per item]], the z shape
        (H/64, W/64) and the hint and z_c the decoder will reconstruct."""
        self._check_feature(feature)
        y = self.g_a(feature)
        indices = self.vq.nearest(self.h_a(y))
        z_strings = self.vq.compress(indices)
        out = self.latent_codec.compress(y, self._hyper_params(self.vq.lookup(indices)))
        hint = self.g_s(out["y_hat"])
        return {
            "strings": [out["strings"][0], z_strings],
            "shape": tuple(indices.shape[1:]),
            "hint": hint,
            "z_c": self.out(hint),
        }

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int]) -> dict[str, Any]:
        """Hint and z_c from the output of :meth:`compress`; they equal the eval-mode
        forward's bit for bit."""
        if len(strings) != 2 or len(strings[0]) != len(strings[1]):
            raise ValueError("expected strings = [[y string per item], [z string per item]]")
        y_strings, z_strings = strings
        height, width = shape
        indices = self.vq.decompress(z_strings, (height, width))
        params = self._hyper_params(self.vq.lookup(indices))
        y_hat = self.latent_codec.decompress([y_strings], (4 * height, 4 * width), params)
        hint = self.g_s(y_hat["y_hat"])
        return {"hint": hint, "z_c": self.out(hint)}

    def _hyper_params(self, z_hat: Tensor) -> Tensor:
        with entropy_fp32(z_hat.device.type):
            return self.h_s(z_hat.float())

    def _check_feature(self, feature: Tensor) -> None:
        if (
            feature.dim() != 4
            or feature.shape[1] != self.feature_channels
            or feature.shape[2] % 8
            or feature.shape[3] % 8
            or feature.shape[2] == 0
            or feature.shape[3] == 0
        ):
            raise ValueError(
                f"expected a B×{self.feature_channels}×H×W feature with H, W non-zero "
                f"multiples of 8, got {tuple(feature.shape)}"
            )

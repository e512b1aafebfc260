"""ELIC space-channel context model (SCCTX) coded into one rANS string per image."""

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    LatentCodec,
)
from compressai.models import get_scale_table
from compressai.ops import quantize_ste
from torch import Tensor, nn

from .bitstream import BitstreamError
from .buffers import resize_entropy_buffers_hook
from .precision import entropy_fp32

# ``step(k, i, scales, means)`` returns y_hat of group ``k``, pass ``i`` (0: anchors,
# 1: non-anchors), all tensors being checkerboard halves of shape [B, C, H, W // 2].
_Step = Callable[[int, int, Tensor, Tensor], Tensor]

#: what the channel context of group k reads: every decoded group (ELIC) or the first and the
#: most recent one (the Chandelier re-implementation, CompressAI's ``Elic2022Chandelier``)
CHANNEL_CONTEXT_INPUTS = ("all", "first_and_previous")
#: order of the two halves of a parameter network's output
CHUNK_ORDERS = (("scales", "means"), ("means", "scales"))

_COMPRESSAI_GROUP_KEY = re.compile(
    r"latent_codec\.y(\d+)\.(context_prediction|entropy_parameters|y\.gaussian_conditional)\.(.+)"
)


def check_rans_string(string: bytes) -> None:
    """Refuse what cannot be a CompressAI rANS string (BitstreamError).

    rANS64 strings are 32-bit words with an 8-byte final state; the C++ decoder does not
    bound-check, so anything else must be rejected before it is handed over.
    """
    if len(string) < 8 or len(string) % 4:
        raise BitstreamError(f"malformed rANS string of {len(string)} bytes")


class SpaceChannelContextCodec(LatentCodec):
    """Space-channel context model of ELIC [He2022] with a single rANS string per image.

    The latent is split into uneven channel groups. Each group is coded in two
    checkerboard passes (anchors, then non-anchors conditioned on the decoded anchors),
    conditioned on all previously decoded groups (``channel_context``) and on the hyper
    parameters ``side_params``. Numerically, :meth:`forward` matches CompressAI's
    ``ChannelGroupsLatentCodec`` of per-group ``CheckerboardLatentCodec(forward_method=
    "twopass")`` over ``GaussianConditionalLatentCodec(quantizer="ste")``, as used by
    ``Elic2022Official``. Unlike it, :meth:`compress` writes all groups and passes into
    one rANS string per batch item, and forward, compress and decompress share a single
    routine, so eval-mode ``forward(y)["y_hat"]`` equals ``decompress(compress(y))["y_hat"]``
    bit for bit.

    Args:
        groups: Channels of each group.
        channel_context: ``"y1"`` .. ``"y{K-1}"``; module ``k`` maps the concatenated
            ``y_hat`` of the groups ``channel_context_input`` names to ``2 * groups[k]``
            channels.
        spatial_context: Per group, ``groups[k] -> 2 * groups[k]`` channels, applied to a
            full-resolution tensor holding the decoded anchors and zeros elsewhere
            (e.g. a 5x5 ``CheckerboardMaskedConv2d``).
        param_aggregation: Per group, a pointwise network (1x1 convs, pointwise
            activations) mapping ``cat([spatial, channel (k > 0 only), side_params])`` to
            ``2 * groups[k]`` channels, chunked as ``chunks``. Without
            ``anchor_param_aggregation`` it also serves the anchor pass, with a zero spatial
            context, as in CompressAI.
        anchor_parity: ``"even"``: anchors at (even, even) and (odd, odd) positions, as in
            CompressAI; ``"odd"``: the other half.
        scale_table: Scale table of the shared ``GaussianConditional``
            (default: CompressAI's ``get_scale_table()``).
        scale_bound: Lower bound on the predicted scales.
        channel_context_input: ``"all"``: group ``k`` reads groups ``0..k-1`` (ELIC);
            ``"first_and_previous"``: group 0, and group ``k-1`` for ``k > 1`` (CompressAI's
            ``Elic2022Chandelier``).
        chunks: Order of the parameter networks' output halves, ``("scales", "means")`` or
            ``("means", "scales")``.
        anchor_param_aggregation: Optional separate anchor-pass networks (official RDEIC):
            per group, ``cat([channel (k > 0 only), side_params])`` -> ``2 * groups[k]``;
            ``param_aggregation`` then serves the non-anchors only.

    [He2022]: "ELIC: Efficient Learned Image Compression with Unevenly Grouped
    Space-Channel Contextual Adaptive Coding", CVPR 2022.
    """

    def __init__(
        self,
        groups: Sequence[int],
        channel_context: Mapping[str, nn.Module],
        spatial_context: Sequence[nn.Module],
        param_aggregation: Sequence[nn.Module],
        anchor_parity: str = "even",
        scale_table: Sequence[float] | None = None,
        scale_bound: float = 0.11,
        channel_context_input: str = "all",
        chunks: Sequence[str] = ("scales", "means"),
        anchor_param_aggregation: Sequence[nn.Module] | None = None,
    ):
        super().__init__()
        if anchor_parity not in ("even", "odd"):
            raise ValueError(f"anchor_parity must be 'even' or 'odd', got {anchor_parity!r}")
        if channel_context_input not in CHANNEL_CONTEXT_INPUTS:
            raise ValueError(
                f"channel_context_input must be one of {CHANNEL_CONTEXT_INPUTS}, "
                f"got {channel_context_input!r}"
            )
        if tuple(chunks) not in CHUNK_ORDERS:
            raise ValueError(f"chunks must be one of {CHUNK_ORDERS}, got {tuple(chunks)}")
        if not groups or any(g <= 0 for g in groups):
            raise ValueError(f"groups must be positive channel counts, got {list(groups)}")
        per_group = [spatial_context, param_aggregation]
        if anchor_param_aggregation is not None:
            per_group.append(anchor_param_aggregation)
        if any(len(modules) != len(groups) for modules in per_group):
            raise ValueError(
                "spatial_context, param_aggregation and anchor_param_aggregation need one "
                "module per group"
            )
        expected_keys = {f"y{k}" for k in range(1, len(groups))}
        if set(channel_context) != expected_keys:
            raise ValueError(
                f"channel_context keys must be {sorted(expected_keys)}, "
                f"got {sorted(channel_context)}"
            )
        self.groups = [int(g) for g in groups]
        self.anchor_parity = anchor_parity
        self.channel_context_input = channel_context_input
        self.chunks = tuple(chunks)
        self.channel_context = nn.ModuleDict(channel_context)
        self.spatial_context = nn.ModuleList(spatial_context)
        self.param_aggregation = nn.ModuleList(param_aggregation)
        self.anchor_param_aggregation = (
            None if anchor_param_aggregation is None else nn.ModuleList(anchor_param_aggregation)
        )
        table = get_scale_table().tolist() if scale_table is None else scale_table
        self.gaussian_conditional = GaussianConditional(
            [float(s) for s in table], scale_bound=scale_bound
        )
        self.register_load_state_dict_pre_hook(resize_entropy_buffers_hook)

    def forward(self, y: Tensor, side_params: Tensor) -> dict[str, Any]:
        """Quantize ``y`` around the predicted means (STE) and estimate its likelihoods."""
        with entropy_fp32(y.device.type):
            y, side_params = y.float(), side_params.float()
            self._check_shapes(y.shape, side_params)
            y_ = [self._split(y_k) for y_k in y.split(self.groups, dim=1)]
            likelihoods_: list[list[Tensor]] = [[] for _ in self.groups]

            def step(k: int, i: int, scales: Tensor, means: Tensor) -> Tensor:
                _, likelihoods = self.gaussian_conditional(y_[k][i], scales, means)
                likelihoods_[k].append(likelihoods)
                return quantize_ste(y_[k][i] - means) + means

            y_hat = self._run(side_params, step)
            y_likelihoods = torch.cat([self._merge(*lk) for lk in likelihoods_], dim=1)
        return {"likelihoods": {"y": y_likelihoods}, "y_hat": y_hat}

    def compress(self, y: Tensor, side_params: Tensor) -> dict[str, Any]:
        """Encode ``y`` into one rANS string per batch item."""
        gc = self.gaussian_conditional
        cdf, cdf_lengths, offsets = self._cdf_tables()
        with entropy_fp32(y.device.type):
            y, side_params = y.float(), side_params.float()
            self._check_shapes(y.shape, side_params)
            y_ = [self._split(y_k) for y_k in y.split(self.groups, dim=1)]
            symbols_: list[Tensor] = []
            indexes_: list[Tensor] = []

            def step(k: int, i: int, scales: Tensor, means: Tensor) -> Tensor:
                symbols = gc.quantize(y_[k][i], "symbols", means)
                symbols_.append(symbols.flatten(1))
                indexes_.append(gc.build_indexes(scales).flatten(1))
                return gc.dequantize(symbols, means)

            y_hat = self._run(side_params, step)

        # CompressAI emits one string per group and pass; all passes share one here.
        strings = []
        symbols_b = torch.cat(symbols_, dim=1).tolist()
        indexes_b = torch.cat(indexes_, dim=1).tolist()
        for symbols, indexes in zip(symbols_b, indexes_b, strict=True):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols, indexes, cdf, cdf_lengths, offsets)
            strings.append(encoder.flush())
        return {"strings": [strings], "shape": tuple(y.shape[2:]), "y_hat": y_hat}

    def decompress(
        self,
        strings: list[list[bytes]],
        shape: tuple[int, int],
        side_params: Tensor,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Decode ``strings = [one string per batch item]`` of a latent of spatial ``shape``."""
        if len(strings) != 1 or len(strings[0]) != side_params.size(0):
            raise ValueError(
                f"expected strings = [one string per batch item] for {side_params.size(0)} "
                f"items, got lists of lengths {[len(s) for s in strings]}"
            )
        gc = self.gaussian_conditional
        cdf, cdf_lengths, offsets = self._cdf_tables()
        decoders = []
        for string in strings[0]:
            check_rans_string(string)
            decoder = RansDecoder()
            decoder.set_stream(string)
            decoders.append(decoder)

        with entropy_fp32(side_params.device.type):
            side_params = side_params.float()
            n = side_params.size(0)
            self._check_shapes((n, sum(self.groups), *shape), side_params)

            def step(k: int, i: int, scales: Tensor, means: Tensor) -> Tensor:
                indexes = gc.build_indexes(scales)
                symbols = [
                    decoder.decode_stream(idx, cdf, cdf_lengths, offsets)
                    for decoder, idx in zip(decoders, indexes.flatten(1).tolist(), strict=True)
                ]
                symbols = torch.tensor(symbols, dtype=torch.int32, device=means.device)
                return gc.dequantize(symbols.reshape(indexes.shape), means)

            y_hat = self._run(side_params, step)
        return {"y_hat": y_hat}

    def _run(self, side_params: Tensor, step: _Step) -> Tensor:
        """Run the context model; the one routine behind forward, compress and decompress."""
        side_ = self._split(side_params)
        y_hat_: list[Tensor] = []
        for k, g in enumerate(self.groups):
            ctx_ = side_
            if k > 0:
                support = y_hat_
                if self.channel_context_input == "first_and_previous":
                    support = y_hat_[:1] if k == 1 else [y_hat_[0], y_hat_[-1]]
                channel_ = self._split(self.channel_context[f"y{k}"](torch.cat(support, dim=1)))
                ctx_ = tuple(torch.cat(pair, dim=1) for pair in zip(channel_, side_, strict=True))
            b, _, h, w_half = side_[0].shape
            spatial = side_params.new_zeros((b, 2 * g, h, w_half))
            anchors = self._pass(k, 0, spatial, ctx_[0], step)
            spatial_full = self.spatial_context[k](self._merge(anchors, torch.zeros_like(anchors)))
            non_anchors = self._pass(k, 1, self._split(spatial_full)[1], ctx_[1], step)
            y_hat_.append(self._merge(anchors, non_anchors))
        return torch.cat(y_hat_, dim=1)

    def _pass(self, k: int, i: int, spatial: Tensor, ctx: Tensor, step: _Step) -> Tensor:
        if i == 0 and self.anchor_param_aggregation is not None:
            params = self.anchor_param_aggregation[k](ctx)
        else:
            params = self.param_aggregation[k](torch.cat((spatial, ctx), dim=1))
        first, second = params.chunk(2, dim=1)
        scales, means = (first, second) if self.chunks == ("scales", "means") else (second, first)
        return step(k, i, scales, means)

    # Same layout as CheckerboardLatentCodec.unembed/embed, which are bound to that class;
    # these stack/reshape versions need no codec instance and no in-place writes.
    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Split [B, C, H, W] into its (anchor, non-anchor) halves of shape [B, C, H, W/2]."""
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2)
        a = int(self.anchor_parity == "odd")
        anchor = torch.stack((x[:, :, :, 0, :, a], x[:, :, :, 1, :, 1 - a]), dim=3)
        non_anchor = torch.stack((x[:, :, :, 0, :, 1 - a], x[:, :, :, 1, :, a]), dim=3)
        return anchor.reshape(b, c, h, w // 2), non_anchor.reshape(b, c, h, w // 2)

    def _merge(self, anchor: Tensor, non_anchor: Tensor) -> Tensor:
        """Inverse of :meth:`_split`."""
        b, c, h, w_half = anchor.shape
        anchor = anchor.reshape(b, c, h // 2, 2, w_half)
        non_anchor = non_anchor.reshape(b, c, h // 2, 2, w_half)
        a = int(self.anchor_parity == "odd")
        rows = []
        for r in range(2):
            cols = (anchor[:, :, :, r], non_anchor[:, :, :, r])
            rows.append(torch.stack(cols if (a + r) % 2 == 0 else cols[::-1], dim=-1))
        return torch.stack(rows, dim=3).reshape(b, c, h, 2 * w_half)

    def _check_shapes(self, y_shape: Sequence[int], side_params: Tensor) -> None:
        n, c, h, w = y_shape
        if c != sum(self.groups):
            raise ValueError(
                f"latent has {c} channels, groups {self.groups} need {sum(self.groups)}"
            )
        if h <= 0 or w <= 0 or h % 2 or w % 2:
            raise ValueError(f"checkerboard coding needs an even, non-empty latent, got {h}x{w}")
        if side_params.dim() != 4 or side_params.shape[0] != n or side_params.shape[2:] != (h, w):
            raise ValueError(
                f"side_params of shape {tuple(side_params.shape)} do not match a latent of "
                f"shape {(n, c, h, w)}"
            )

    def _cdf_tables(self) -> tuple[list[list[int]], list[int], list[int]]:
        gc = self.gaussian_conditional
        if gc.quantized_cdf.numel() == 0:
            raise ValueError("CDFs are not built: call gaussian_conditional.update() first")
        return gc.quantized_cdf.tolist(), gc.cdf_length.tolist(), gc.offset.tolist()

    @classmethod
    def from_compressai(
        cls, codec: ChannelGroupsLatentCodec, channel_context_input: str = "all"
    ) -> Self:
        """Build a codec sharing the networks of a CompressAI ``Elic2022Official``-style codec
        (or, with ``channel_context_input="first_and_previous"``, ``Elic2022Chandelier``'s).

        Shares ``channel_context``, each group's ``context_prediction`` and
        ``entropy_parameters``, and group 0's ``GaussianConditional``; the groups' chunk
        order carries over.
        """
        group_codecs = [codec.latent_codec[f"y{k}"] for k in range(len(codec.groups))]
        chunk_orders = set()
        for group_codec in group_codecs:
            inner = group_codec.y if isinstance(group_codec, CheckerboardLatentCodec) else None
            if not (
                isinstance(inner, GaussianConditionalLatentCodec)
                and tuple(inner.chunks) in CHUNK_ORDERS
                and isinstance(inner.entropy_parameters, nn.Identity)
            ):
                raise ValueError(
                    "expected a CheckerboardLatentCodec over a GaussianConditionalLatentCodec "
                    f"with chunks {CHUNK_ORDERS[0]} or {CHUNK_ORDERS[1]} per group"
                )
            chunk_orders.add(tuple(inner.chunks))
        parities = {group_codec.anchor_parity for group_codec in group_codecs}
        if len(parities) != 1 or len(chunk_orders) != 1:
            raise ValueError(
                f"groups disagree on anchor_parity {sorted(parities)} or chunks "
                f"{sorted(chunk_orders)}"
            )
        scctx = cls(
            codec.groups,
            codec.channel_context,
            [group_codec.context_prediction for group_codec in group_codecs],
            [group_codec.entropy_parameters for group_codec in group_codecs],
            anchor_parity=parities.pop(),
            channel_context_input=channel_context_input,
            chunks=chunk_orders.pop(),
        )
        scctx.gaussian_conditional = group_codecs[0].y.gaussian_conditional
        return scctx

    @staticmethod
    def remap_compressai_state_dict(
        state_dict: Mapping[str, Tensor], prefix: str
    ) -> dict[str, Tensor]:
        """Map ``Elic2022Official``-style keys under ``prefix`` to this class's names.

        Group 0's ``GaussianConditional`` buffers become the shared one; the other groups'
        are dropped after checking that they equal group 0's. Keys outside ``prefix`` pass
        through unchanged; unknown keys under it raise ``KeyError``.
        """
        remapped: dict[str, Tensor] = {}
        gc_buffers: dict[str, dict[int, Tensor]] = {}
        unknown = []
        for key, value in state_dict.items():
            rest = key[len(prefix) :]
            if not key.startswith(prefix) or rest.startswith("channel_context."):
                remapped[key] = value
                continue
            match = _COMPRESSAI_GROUP_KEY.fullmatch(rest)
            if match is None:
                unknown.append(key)
                continue
            k, part, name = match.groups()
            if part == "context_prediction":
                remapped[f"{prefix}spatial_context.{k}.{name}"] = value
            elif part == "entropy_parameters":
                remapped[f"{prefix}param_aggregation.{k}.{name}"] = value
            else:
                gc_buffers.setdefault(name, {})[int(k)] = value
        if unknown:
            raise KeyError(f"unknown keys under {prefix!r}: {', '.join(unknown)}")
        for name, per_group in gc_buffers.items():
            if 0 not in per_group:
                raise KeyError(f"{prefix}latent_codec.y0.y.gaussian_conditional.{name} missing")
            for k, value in per_group.items():
                if not torch.equal(value, per_group[0]):
                    raise ValueError(
                        f"gaussian_conditional.{name} of group {k} differs from group 0's; "
                        "SpaceChannelContextCodec has a single shared GaussianConditional"
                    )
            remapped[f"{prefix}gaussian_conditional.{name}"] = per_group[0]
        return remapped

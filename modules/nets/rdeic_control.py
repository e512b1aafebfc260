"""RDEIC's control module and the controlled forward of the frozen Stable Diffusion UNet.

The control module is a one-directional ControlNet-XS (Zavadski et al. 2023) as RDEIC uses it:
a narrow copy (``ratio`` of SD's widths, randomly initialised) of the SD UNet's encoder and
middle block that reads cat(z_t, hint) and the text context, never SD's features. Its 12
per-input-block features and its middle feature are added to the SD UNet through 25
zero-initialised 1×1 convolutions: after each of SD's 12 input blocks (the skip keeps the
injected feature), after SD's middle block, and before each of SD's 12 output blocks (control
features in reverse order). "Input/output block" is meant in the ldm sense: conv_in, each
resnet (+ its attention) and each down/up-sampler of diffusers' `UNet2DConditionModel`.

diffusers' ControlNet-XS (`ControlNetXSAdapter`) also feeds SD's features into the control
branch and injects at other points, so this module is assembled from diffusers' blocks instead.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block
from torch import Tensor, nn

#: `UNet2DConditionModel` options (unused by SD) that `controlled_noise_prediction` does not run
_UNSUPPORTED_UNET_OPTIONS = (
    "center_input_sample",
    "class_embed_type",
    "num_class_embeds",
    "addition_embed_type",
    "encoder_hid_dim",
)


def unet_config_with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` completed with `UNet2DConditionModel`'s default for every missing argument."""
    params = inspect.signature(UNet2DConditionModel.__init__).parameters
    defaults = {
        k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **config}


def control_widths(block_out_channels: list[int] | tuple[int, ...], ratio: float) -> list[int]:
    """Control-branch width of every level: ratio·c rounded to a multiple of 8, at least 8."""
    return [max(8, round(ratio * c / 8) * 8) for c in block_out_channels]


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest number of GroupNorm groups ≤ `max_groups` that divides `channels`."""
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


def head_dim(width: int, head_channels: int) -> int:
    """Attention head size: the largest divisor of `width` not above `head_channels`."""
    return max(d for d in range(1, head_channels + 1) if width % d == 0)


def input_block_channels(block_out_channels: list[int], layers_per_block: int) -> list[int]:
    """Output channels of the ldm input blocks: conv_in, then per level the resnets and (all but
    the last level) the downsampler."""
    channels = [block_out_channels[0]]
    for level, c in enumerate(block_out_channels):
        channels += [c] * (layers_per_block + (level < len(block_out_channels) - 1))
    return channels


def output_block_input_channels(block_out_channels: list[int], layers_per_block: int) -> list[int]:
    """Channels of h entering each ldm output block (before the skip concat): the middle block's
    output, then the output of the previous output block (layers_per_block + 1 per up level)."""
    levels = list(reversed(block_out_channels))
    per_level = layers_per_block + 1
    return [levels[0]] + [levels[k // per_level] for k in range(len(levels) * per_level - 1)]


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _layers(block: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """(resnet, attention or None) of every ldm input/output block inside a diffusers block."""
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    return list(zip(block.resnets, attentions, strict=True))


def _resnet_attention(
    resnet: nn.Module, attention: nn.Module | None, h: Tensor, emb: Tensor, context: Tensor
) -> Tensor:
    h = resnet(h, emb)
    if attention is not None:
        h = attention(h, encoder_hidden_states=context, return_dict=False)[0]
    return h


def _time_embedding(
    proj: nn.Module, embedding: nn.Module, timesteps: Tensor, like: Tensor
) -> Tensor:
    """Sinusoidal projection + MLP of `timesteps` (scalar or (B,)), as diffusers' UNet does."""
    t = timesteps.to(like.device).expand(like.shape[0])
    return embedding(proj(t).to(like.dtype))


class ControlModule(nn.Module):
    """The control branch and its 25 zero convolutions for an SD-shaped UNet.

    Args:
        unet_config: the SD UNet's config (`unet.config` or a dict; missing keys take
            `UNet2DConditionModel`'s defaults).
        hint_channels: channels of the hint (RDEIC: the 256-channel g_s feature).
        ratio: control width relative to SD (0.2: 320/640/1280/1280 → 64/128/256/256).
        head_channels: attention head size, lowered to a divisor of the width where needed.
        latent_channels: channels of z_t.
    """

    def __init__(
        self,
        unet_config: Mapping[str, Any],
        hint_channels: int = 256,
        ratio: float = 0.2,
        head_channels: int = 16,
        latent_channels: int = 4,
    ) -> None:
        super().__init__()
        cfg = unet_config_with_defaults(unet_config)
        sd_widths = list(cfg["block_out_channels"])
        layers = int(cfg["layers_per_block"])
        self.widths = widths = control_widths(sd_widths, ratio)
        time_dim = cfg["time_embedding_dim"] or 4 * sd_widths[0]
        transformer_layers = cfg["transformer_layers_per_block"]
        if isinstance(transformer_layers, int):
            transformer_layers = [transformer_layers] * len(sd_widths)
        shared = {
            "temb_channels": time_dim,
            "resnet_eps": cfg["norm_eps"],
            "resnet_act_fn": cfg["act_fn"],
            "resnet_time_scale_shift": cfg["resnet_time_scale_shift"],
            "cross_attention_dim": cfg["cross_attention_dim"],
            "use_linear_projection": cfg["use_linear_projection"],
            "upcast_attention": cfg["upcast_attention"],
        }

        self.time_proj = Timesteps(sd_widths[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(sd_widths[0], time_dim, cfg["act_fn"])
        self.conv_in = nn.Conv2d(latent_channels + hint_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for level, (block_type, width) in enumerate(
            zip(cfg["down_block_types"], widths, strict=True)
        ):
            in_width = widths[max(level - 1, 0)]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers,
                    in_channels=in_width,
                    out_channels=width,
                    add_downsample=level < len(widths) - 1,
                    transformer_layers_per_block=transformer_layers[level],
                    num_attention_heads=width // head_dim(width, head_channels),
                    attention_head_dim=head_dim(width, head_channels),
                    resnet_groups=group_count(math.gcd(in_width, width)),
                    downsample_padding=cfg["downsample_padding"],
                    **shared,
                )
            )
        self.mid_block = UNetMidBlock2DCrossAttn(
            in_channels=widths[-1],
            transformer_layers_per_block=transformer_layers[-1],
            num_attention_heads=widths[-1] // head_dim(widths[-1], head_channels),
            resnet_groups=group_count(widths[-1]),
            output_scale_factor=cfg["mid_block_scale_factor"],
            **shared,
        )
        # diffusers' blocks take one group count for all their norms (it must divide the input
        # and the output width); give every GroupNorm the largest count that divides its own.
        for name, norm in list(self.named_modules()):
            if isinstance(norm, nn.GroupNorm):
                self.set_submodule(
                    name,
                    nn.GroupNorm(
                        group_count(norm.num_channels), norm.num_channels, norm.eps, norm.affine
                    ),
                )

        control_channels = input_block_channels(widths, layers)
        sd_channels = input_block_channels(sd_widths, layers)
        sd_decoder_channels = output_block_input_channels(sd_widths, layers)
        self.encoder_out = nn.ModuleList(
            _zero_conv(c, s) for c, s in zip(control_channels, sd_channels, strict=True)
        )
        self.middle_out = _zero_conv(widths[-1], sd_widths[-1])
        self.decoder_out = nn.ModuleList(
            _zero_conv(c, s)
            for c, s in zip(reversed(control_channels), sd_decoder_channels, strict=True)
        )

    def forward(
        self, z_t: Tensor, timesteps: Tensor, hint: Tensor, context: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """Run the control branch; returns its 12 input-block features and its middle feature."""
        emb = _time_embedding(self.time_proj, self.time_embedding, timesteps, z_t)
        h = self.conv_in(torch.cat([z_t, hint], dim=1))
        features = [h]
        for block in self.down_blocks:
            for resnet, attention in _layers(block):
                h = _resnet_attention(resnet, attention, h, emb, context)
                features.append(h)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
                features.append(h)
        return features, self.mid_block(h, emb, encoder_hidden_states=context)


def controlled_noise_prediction(
    unet: UNet2DConditionModel,
    control: ControlModule | None,
    z_t: Tensor,
    timesteps: Tensor,
    context: Tensor,
    hint: Tensor | None,
    scale: float = 1.0,
) -> Tensor:
    """ε̂ of the SD UNet with the control features added (`scale` times the zero convs' output).

    The UNet is run block by block (the loop of `UNet2DConditionModel.forward` for SD's
    configuration: no class/added embeddings, no masks). `control=None` gives the plain SD
    prediction `unet(z_t, timesteps, encoder_hidden_states=context).sample`. Under autocast
    only the frozen UNet runs in low precision: the control branch and its zero convolutions
    (trainable) stay fp32.
    """
    if control is None:
        return unet(z_t, timesteps, encoder_hidden_states=context).sample
    if hint is None:
        raise ValueError("the controlled prediction needs a hint")
    if any(unet.config[key] for key in _UNSUPPORTED_UNET_OPTIONS):
        raise ValueError(
            f"the controlled forward needs a UNet without {_UNSUPPORTED_UNET_OPTIONS}"
        )
    # the trainable branch and its zero convolutions run in fp32 even when the caller autocasts
    # the frozen UNet (bf16); their outputs join the UNet's activations in the UNet's dtype
    with torch.autocast(z_t.device.type, enabled=False):
        features, middle = control(z_t.float(), timesteps, hint.float(), context.float())
        pairs = zip(control.encoder_out, features, strict=True)
        into_encoder = [zero(feature) * scale for zero, feature in pairs]
        into_middle = control.middle_out(middle) * scale
        pairs = zip(control.decoder_out, features[::-1], strict=True)
        into_decoder = [zero(feature) * scale for zero, feature in pairs]

    def add(h: Tensor, injection: Tensor) -> Tensor:
        return h + injection.to(h.dtype)

    emb = _time_embedding(unet.time_proj, unet.time_embedding, timesteps, z_t)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    h = add(unet.conv_in(z_t), into_encoder[0])
    skips = [h]
    for block in unet.down_blocks:
        for resnet, attention in _layers(block):
            h = _resnet_attention(resnet, attention, h, emb, context)
            h = add(h, into_encoder[len(skips)])
            skips.append(h)
        for downsampler in block.downsamplers or []:
            h = add(downsampler(h), into_encoder[len(skips)])
            skips.append(h)

    h = add(unet.mid_block(h, emb, encoder_hidden_states=context), into_middle)

    # as diffusers: upsample to the skip's size when the input is not a multiple of 2^levels
    odd_size = any(s % 2**unet.num_upsamplers for s in z_t.shape[-2:])
    k = 0
    for block in unet.up_blocks:
        for resnet, attention in _layers(block):
            h = torch.cat([add(h, into_decoder[k]), skips.pop()], dim=1)
            h = _resnet_attention(resnet, attention, h, emb, context)
            k += 1
        for upsampler in block.upsamplers or []:
            h = upsampler(h, skips[-1].shape[-2:] if odd_size else None)

    h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def guided_noise_prediction(
    unet: UNet2DConditionModel,
    control: ControlModule,
    z_t: Tensor,
    t: Tensor,
    context: Tensor,
    hint: Tensor,
    guidance: float,
) -> Tensor:
    """RDEIC's controllable detail generation: ε = ε_sd + s·(ε_θ − ε_sd), s = `guidance`.

    ε_θ is the controlled prediction, ε_sd the plain SD one (same context); s = 1 runs the
    UNet once and returns ε_θ, any other s runs it twice.
    """
    eps = controlled_noise_prediction(unet, control, z_t, t, context, hint)
    if guidance == 1:
        return eps
    eps_sd = controlled_noise_prediction(unet, None, z_t, t, context, None)
    return eps_sd + guidance * (eps - eps_sd)

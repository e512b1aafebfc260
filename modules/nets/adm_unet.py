"""ADM's U-Net (Dhariwal & Nichol 2021, guided-diffusion's `UNetModel`) as a diffusers
`UNet2DModel`.

diffusers' blocks express ADM exactly: `ResnetDownsampleBlock2D`/`ResnetUpsampleBlock2D` are
ADM's BigGAN-style resampling residual blocks (average pooling / nearest upsampling inside the
block, `resblock_updown=True`), `resnet_time_scale_shift="scale_shift"` is ADM's
`use_scale_shift_norm`, the time embedding is ADM's (sinusoidal, cos first, 4·channels wide),
and the skip connections are the same 1 + levels·layers + (levels − 1) feature maps (15 for five
levels of two blocks), the resampling block being a skip source. The middle block of
guided-diffusion always holds an attention block, even with empty `attention_resolutions`;
`mid_attention=False` drops it. Checked against guided-diffusion's `UNetModel` with weights
copied across: same parameter count, same output (bit for bit without attention, 2e-6 with it:
SDPA against ADM's einsum).
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DModel


def adm_unet(
    in_channels: int,
    out_channels: int = 3,
    channels: int = 96,
    channel_mult: Sequence[int] = (1, 1, 2, 2, 3),
    layers_per_block: int = 2,
    mid_attention: bool = True,
    attention_heads: int = 4,
    norm_groups: int = 32,
    dropout: float = 0.0,
) -> UNet2DModel:
    """ADM U-Net without attention at any resolution (only, optionally, in the middle block).

    `channels`·`channel_mult` are the widths of the levels (each but the last halves the
    resolution: inputs must be multiples of 2^(levels − 1)); `attention_heads` split the
    middle block's attention, which normalises its input with `norm_groups` groups as ADM's.
    """
    widths = tuple(channels * m for m in channel_mult)
    if any(w % norm_groups for w in widths):
        raise ValueError(f"U-Net widths {widths} must be multiples of norm_groups={norm_groups}")
    if mid_attention and widths[-1] % attention_heads:
        raise ValueError(f"middle width {widths[-1]} must split into {attention_heads} heads")
    levels = len(widths)
    return UNet2DModel(
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=("ResnetDownsampleBlock2D",) * levels,
        up_block_types=("ResnetUpsampleBlock2D",) * levels,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        norm_num_groups=norm_groups,
        norm_eps=1e-5,
        dropout=dropout,
        add_attention=mid_attention,
        attention_head_dim=widths[-1] // attention_heads,
        attn_norm_num_groups=norm_groups,
    )

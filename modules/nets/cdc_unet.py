"""The denoising U-Net of CDC (Yang & Mandt, NeurIPS 2023), conditioned by concatenation.

A six-level U-Net with ResNet blocks, linear attention at every level and a scalar time input
t = n/N (embedded by an MLP 1 -> 4·dim -> dim). The compressor's context maps (finest first)
are concatenated to the input of the first ResNet block of the first
``len(context_channels)`` levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ChannelLayerNorm(nn.Module):
    """Layer normalisation over the channels of every pixel, with a learnable gain and bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.g + self.b


class Block(nn.Sequential):
    """Convolution -> channel LayerNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            ChannelLayerNorm(out_channels),
            nn.ReLU(),
        )


class ResnetBlock(nn.Module):
    """Two `Block`s with a residual connection (1×1 convolution when the width changes).

    With ``time_dim`` set, an embedding of the time is mapped to a per-channel bias added
    after the first block; ``time_dim=None`` gives a time-less block (the compressor's).
    ``kernel_size`` is the first block's kernel (7 for the very first block of a network).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int | None = None,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.time_mlp = (
            nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(time_dim, out_channels))
            if time_dim is not None
            else None
        )
        self.block1 = Block(in_channels, out_channels, kernel_size)
        self.block2 = Block(out_channels, out_channels)
        self.res_conv = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, time_emb: Tensor | None = None) -> Tensor:
        h = self.block1(x)
        if self.time_mlp is not None:
            if time_emb is None:
                raise ValueError("this ResnetBlock needs a time embedding")
            h = h + self.time_mlp(time_emb)[:, :, None, None]
        return self.block2(h) + self.res_conv(x)


class LinearAttention(nn.Module):
    """Single-head linear attention (Shen et al. 2021): softmax of the keys over the pixels,
    context = k·vᵀ, output = contextᵀ·q, with the query scaled by channels^-1/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**-0.5
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.to_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.to_qkv(x).reshape(b, 3, c, h * w).unbind(1)
        q = q * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bdn,ben->bde", k, v)
        out = torch.einsum("bde,bdn->ben", context, q)
        return self.to_out(out.reshape(b, c, h, w))


class AttentionBlock(nn.Module):
    """Pre-norm residual linear attention: x + attn(LayerNorm(x))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.attn = LinearAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm(x))


class DownLevel(nn.Module):
    """Encoder level: two ResNet blocks, attention, then a stride-2 convolution (or none)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        kernel_size: int = 3,
        downsample: bool = True,
    ) -> None:
        super().__init__()
        self.res1 = ResnetBlock(in_channels, out_channels, time_dim, kernel_size)
        self.res2 = ResnetBlock(out_channels, out_channels, time_dim)
        self.attn = AttentionBlock(out_channels)
        self.down = (
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            if downsample
            else nn.Identity()
        )


class UpLevel(nn.Module):
    """Decoder level: two ResNet blocks on cat(x, skip), attention, then a 2× upsampling."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int) -> None:
        super().__init__()
        self.res1 = ResnetBlock(2 * out_channels, in_channels, time_dim)
        self.res2 = ResnetBlock(in_channels, in_channels, time_dim)
        self.attn = AttentionBlock(in_channels)
        self.up = nn.ConvTranspose2d(in_channels, in_channels, 4, stride=2, padding=1)


class ConditionalUNet(nn.Module):
    """CDC's denoiser: predicts x_0 (or ε) from x_n, the time n/N and the context maps.

    Level i has ``dim * dim_mults[i]`` channels at resolution H / 2**i; ``context[i]`` (at
    H / 2**i, ``context_channels[i]`` channels) is concatenated to the input of level i's first
    ResNet block. The skip of level 0 is computed but not used, as in the official model.
    """

    def __init__(
        self,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 3, 4, 5, 6),
        context_channels: Sequence[int] = (64, 64, 128, 192),
        channels: int = 3,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(context_channels) > len(dim_mults):
            raise ValueError(
                f"{len(context_channels)} context levels for a {len(dim_mults)}-level U-Net"
            )
        self.channels = channels
        self.context_channels = tuple(context_channels)
        self.gradient_checkpointing = gradient_checkpointing
        self.stride = 2 ** (len(dim_mults) - 1)

        self.time_mlp = nn.Sequential(nn.Linear(1, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        dims = [channels, *(dim * mult for mult in dim_mults)]
        in_out = list(pairwise(dims))
        ctx = [*self.context_channels, *[0] * (len(dim_mults) - len(self.context_channels))]
        self.downs = nn.ModuleList(
            DownLevel(
                c_in + ctx[i],
                c_out,
                time_dim=dim,
                kernel_size=7 if i == 0 else 3,
                downsample=i < len(in_out) - 1,
            )
            for i, (c_in, c_out) in enumerate(in_out)
        )
        mid = dims[-1]
        self.mid_res1 = ResnetBlock(mid, mid, dim)
        self.mid_attn = AttentionBlock(mid)
        self.mid_res2 = ResnetBlock(mid, mid, dim)
        self.ups = nn.ModuleList(
            UpLevel(c_in, c_out, time_dim=dim) for c_in, c_out in reversed(in_out[1:])
        )
        self.final = nn.Sequential(ChannelLayerNorm(dim), nn.Conv2d(dim, channels, 7, padding=3))

    def _run(self, module: nn.Module, *args: Any) -> Tensor:
        """Call a ResNet or attention block, checkpointed when enabled and training."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: Tensor, t: Tensor, context: Sequence[Tensor]) -> Tensor:
        """x: B×channels×H×W (H, W multiples of ``2**(len(dim_mults)-1)``); t: (B,) times
        in [0, 1); context: one map per entry of ``context_channels``, finest first."""
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"H and W must be multiples of {self.stride}, got {x.shape}")
        if len(context) != len(self.context_channels):
            raise ValueError(f"expected {len(self.context_channels)} context maps")
        time_emb = self.time_mlp(t.reshape(-1, 1).to(x.dtype))

        skips = []
        for i, level in enumerate(self.downs):
            if i < len(context):
                x = torch.cat((x, context[i]), dim=1)
            x = self._run(level.res1, x, time_emb)
            x = self._run(level.res2, x, time_emb)
            x = self._run(level.attn, x)
            skips.append(x)
            x = level.down(x)

        x = self._run(self.mid_res1, x, time_emb)
        x = self._run(self.mid_attn, x)
        x = self._run(self.mid_res2, x, time_emb)

        for level in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)
            x = self._run(level.res1, x, time_emb)
            x = self._run(level.res2, x, time_emb)
            x = self._run(level.attn, x)
            x = level.up(x)
        return self.final(x)

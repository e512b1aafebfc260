"""Foundation-diffusion codec (Relic et al., ECCV 2024): one model for every rate, the
quantisation error removed by a frozen Stable Diffusion 2.1.

    y = latent_scale · mean of E_vae(x)                       frozen SD VAE encoder
    (a, b, s) = P_φ(y, λ),  t = s · max_timestep              modules.nets.ParameterEstimator
    ẑ = Q(a ⊙ y + b),  ŷ_t = (ẑ − b) / a                     per-channel affine quantiser
    ŷ_0 = DDIM(ŷ_t, t → 0) with the frozen UNet, empty prompt Algorithm 1
    x̂ = D_vae(ŷ_0)
Stream: the entropy-coded ẑ (and its hyper-latent), then a, b (fp16 per channel), t and the
number of decoding passes (u16 each): the decoder needs neither λ nor P_φ. λ is an encoding
option (`set_encoding(lmbda=...)`, `eval.py encoding='{lmbda: [1, 5, 10, 20]}'`); nothing of SD
is trained or saved, and the backbone's identity is part of the model fingerprint.

Choices where the paper is silent (each a config value of configs/model/foundation.yaml):
- Latent: the posterior mean, not a sample (the encoder must be deterministic, and a sample
  adds noise that costs bits); the SD 2.1-base (ε-prediction) backbone of the other methods.
- t: SD's 0-based training index. Decoding visits t, t − 1, …, 0 (t + 1 UNet passes, the last
  one returns x̂_0), `decoding='{steps: K}'` respaces that to K passes (`ddim_indices`);
  `max_timestep` = 300 (the paper's t lies in 20–70, "< 10 %" of 1000; 300 leaves room for
  λ < 1 and keeps the sigmoid away from saturation). The stream's t is round(s · max_timestep).
- ŷ_t enters the reverse process as it is (the paper: no added noise, no √ᾱ_t scaling; √ᾱ_t
  is 0.96–0.99 for t ∈ [20, 70]).
- P_φ: three stride-2/stride-1 pairs of 3×3 convolutions of widths 64, 128, 256 with SiLU and a
  3×3 head with mean pooling; ln(λ/λ̄) as the extra input channel (λ̄ = 5.62, the geometric mean
  of the training λs: centred, so that only the λ-dependent part of the loss shapes the
  λ dependence of a, b, t); a = exp of a sigmoid-mapped log
  range [1/32, 32] (a > 0 and fp16-safe whatever the input), b = 8·tanh(·/8), s = sigmoid.
  The head starts at zero weights with a = 1, b = 0, t = 76, the noise-matched quantiser:
  uniform rounding with step 1/a adds noise of std 1/(a√12) = 0.289, SD's √((1 − ᾱ_t)/ᾱ_t) at
  t = 76.
- Quantisation: ẑ is rounded around the entropy model's predicted means (CompressAI's
  mean-offset rounding, straight-through in training, additive U(−½, ½) noise for the training
  rate) instead of onto the integer grid of Eq. 4. With a Gaussian mean-scale model that is
  what the coded rate equals (integer-grid symbols would be coded around rounded means and
  cost more than their likelihood estimate); it keeps |ẑ − T(y)| ≤ ½, hence
  |T⁻¹(ẑ) − y| ≤ 1/(2a) per channel, as Eq. 4 does. The offset b is then absorbed by the
  predicted means, but it is still estimated and sent (the paper's 9 parameters, 8 bytes).
  The naive baseline (`NaiveFoundationModule`) rounds onto the integer grid as in Fig. 2.
- Entropy model: the paper's Entroformer (transformer hyperprior, bidirectional two-pass
  context) is replaced by the shared CompressAI parts with the same structure: a hyperprior at
  1/4 of the latent's resolution plus the checkerboard two-pass context model over channel
  groups [2, 2] (`modules.nets.checkerboard_hyperprior`); fp32 with autocast disabled like
  every entropy path here. About 3 M trainable parameters with P_φ, against the paper's 36 M
  (logged when the model is built).
- Training (Sec. 4.4): one UNet evaluation at the continuous t, ᾱ(t) log-linearly interpolated
  in SD's float64 table (`continuous_alpha_cumprod`, exact at integer t, non-zero derivative)
  so that the loss reaches P_φ's timestep output both through ᾱ(t) and the UNet's sinusoidal
  time embedding; ŷ_0 = (ŷ_t − √(1 − ᾱ) ε̂)/√ᾱ, x̂ = D_vae(ŷ_0). L = mean over the batch of
  bpp + λ · `mse_scale` · MSE(x, x̂) with images in [0, 1] and the rate in bits per pixel: at
  λ = 10 a gain of 0.001 in MSE is worth 0.01 bpp, which puts λ ∈ {1, 5, 10, 20} in the paper's
  low-rate regime (an MSE on 0–255 values, as ELIC's λ·255²·MSE, would weigh distortion 65025
  times more and push the same λ to high rates). λ is drawn per sample
  (`lmbda_sampling: sample`; `batch` draws one per update as the paper's wording), so every
  update sees several rates. bf16 autocast for the frozen UNet and VAE on GPU only, P_φ and the
  entropy path in fp32; `gradient_checkpointing` turns on diffusers' block checkpointing of the
  UNet and the VAE decoder (active only when gradients are computed).
- Optimisation (not in the paper): Adam, lr 1e-4 (the paper's), aux lr 1e-3 for the
  EntropyBottleneck quantiles, gradient-norm clip 1.0, batch 8 of 256² Vimeo-90k crops,
  300K steps, no decay.
"""

from __future__ import annotations

import math
import struct
import zlib
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from modules.base import CodecModule
from modules.diffusion import (
    continuous_alpha_cumprod,
    ddim_indices,
    ddim_sample,
    load_backbone,
    x0_from_eps,
)
from modules.entropy import BitstreamError, entropy_fp32
from modules.nets import ParameterEstimator, checkerboard_hyperprior
from modules.utils import ConfigError

#: latent downsampling of the SD VAE, and of the hyper-latent relative to the latent
VAE_STRIDE, HYPER_STRIDE = 8, 4
#: the largest fp16 magnitude used for side parameters (they must stay finite in the stream)
_FP16_LIMIT = 1024.0
#: naive baseline: symbols as little-endian int16
_SYMBOLS = np.dtype("<i2")


def _fp16(value: Tensor) -> Tensor:
    """`value` as the stream carries it: rounded to float16, back in float32."""
    return value.to(torch.float16).float()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bits_per_image(likelihoods: dict[str, Tensor]) -> Tensor:
    """Σ −log2 p over the latents of each image of the batch (B,), fp32."""
    return sum(lik.float().log().flatten(1).sum(1) for lik in likelihoods.values()) / -math.log(2)


class LatentDiffusionCodec(CodecModule):
    """What the foundation codec and its naive baseline share: the frozen SD backbone, the
    affine quantiser T, the DDIM decoder from ŷ_t and the side information (a, b, t, steps).

    Subclasses choose the side parameters (`side_parameters`) and how T(y) is quantised and
    coded (`quantize`, `entropy_code`, `entropy_decode`).
    """

    method = "foundation"
    pad_multiple = 64  # the VAE (8) times the UNet's three downsamplings

    def __init__(
        self,
        backbone: dict[str, Any] | None,
        max_timestep: int,
        decode_steps: int | None,
        scale_limits: tuple[float, float],
        offset_limit: float,
        bf16: bool,
        **optimizer: Any,
    ) -> None:
        super().__init__(**optimizer)
        backbone = self.freeze("backbone", load_backbone(**(backbone or {})))
        if not 0 < max_timestep < len(backbone.alphas_cumprod):
            raise ValueError(
                f"model.max_timestep must be in [1, {len(backbone.alphas_cumprod) - 1}], "
                f"got {max_timestep}"
            )
        self.max_timestep = int(max_timestep)
        self.bf16 = bf16
        self.latent_channels = int(backbone.unet.config.in_channels)
        # the limits the decoder accepts, as fp16 values (a crafted stream cannot exceed them)
        self.scale_limits = tuple(float(_fp16(torch.tensor(v))) for v in scale_limits)
        self.offset_limit = float(offset_limit)
        # a (fp16 × C), b (fp16 × C), start timestep t (u16), decoding passes (u16, 0: t + 1)
        self._side = struct.Struct(f"<{self.latent_channels}e{self.latent_channels}eHH")
        self.decoding = self.checked_decoding({"steps": decode_steps})

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def side_parameters(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, t) for a latent batch as the stream carries them: a, b fp16-rounded (B×C,
        float32), t (B,) long."""

    @abstractmethod
    def quantize(self, v: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eval-mode ẑ of v = T(y) and its likelihoods; ẑ equals what `entropy_decode` gives."""

    @abstractmethod
    def entropy_code(self, v: Tensor) -> list[bytes]:
        """The strings of one image's v = T(y)."""

    @abstractmethod
    def entropy_decode(self, strings: Sequence[bytes], shape: tuple[int, int]) -> Tensor:
        """ẑ (1×C×h×w) from the strings of a latent of spatial `shape`; BitstreamError if bad."""

    # ------------------------------------------------------------------ options
    def checked_decoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """steps: None (one UNet pass per integer step, the paper) or K in [1, max_timestep + 1]
        passes, respaced; a stream whose t is smaller uses t + 1."""
        steps = options["steps"]
        if steps is not None and (
            isinstance(steps, bool)
            or not isinstance(steps, int)
            or not 1 <= steps <= self.max_timestep + 1
        ):
            raise ConfigError(
                f"decoding steps must be null (one pass per timestep) or an integer in "
                f"[1, {self.max_timestep + 1}], got {steps!r}"
            )
        return {"steps": steps}

    # ------------------------------------------------------------------ frozen SD
    def latent(self, x: Tensor) -> Tensor:
        """Image batch in [0, 1] -> y = latent_scale · posterior mean (fp32, no gradient)."""
        with torch.no_grad(), self.backbone.autocast(self.bf16):
            return self.backbone.latent(2 * x - 1).float()

    def noise_prediction(self, y_t: Tensor, t: Tensor) -> Tensor:
        """ε̂ of the frozen UNet (empty prompt) at timesteps t (B,), fp32."""
        with self.backbone.autocast(self.bf16):
            return self.backbone.noise_prediction(y_t, t).float()

    def vae_decode(self, y0: Tensor) -> Tensor:
        """ŷ_0 -> image in about [0, 1] (not clamped), fp32."""
        with self.backbone.autocast(self.bf16):
            return (self.backbone.decode(y0).float() + 1) / 2

    def denoise(self, y_t: Tensor, t: int, steps: int | None) -> Tensor:
        """DDIM (η = 0) from ŷ_t at integer step t down to ŷ_0 over t + 1 passes, or `steps`."""
        passes = t + 1 if steps is None else min(steps, t + 1)
        table = self.backbone.alphas_cumprod

        def predict(z: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
            eps = self.noise_prediction(z, index)
            return x0_from_eps(z, eps, table[index].view(-1, 1, 1, 1)), eps

        indices = ddim_indices(t + 1, passes).to(y_t.device)
        return ddim_sample(predict, table, indices, y_t)

    def decode_latent(self, y_t: Tensor, t: Tensor, steps: int | None) -> Tensor:
        """Denoise and VAE-decode each image of a batch from its own t -> images in [0, 1]."""
        images = []
        for item, start in zip(y_t.split(1), t.tolist(), strict=True):
            images.append(self.vae_decode(self.denoise(item, start, steps)))
        return torch.cat(images)

    # ------------------------------------------------------------------ quantiser
    @staticmethod
    def transform(y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """T(y) = a ⊙ y + b with per-image, per-channel a, b (B×C)."""
        return a[..., None, None] * y + b[..., None, None]

    @staticmethod
    def inverse(z: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """T⁻¹(z) = (z − b) / a."""
        return (z - b[..., None, None]) / a[..., None, None]

    def coded_pass(self, x: Tensor) -> dict[str, Any]:
        """The codec as `compress` -> `decompress` runs it, with the likelihoods of ẑ."""
        y = self.latent(x)
        a, b, t = self.side_parameters(y)
        z_hat, likelihoods = self.quantize(self.transform(y, a, b))
        y_t = self.inverse(z_hat, a, b)
        x_hat = self.decode_latent(y_t, t, self.decoding["steps"])
        return {"x_hat": x_hat, "likelihoods": likelihoods, "y": y, "y_t": y_t, "t": t}

    def likelihoods(self, x: Tensor) -> dict[str, Tensor]:
        """Likelihoods of ẑ without running the diffusion decoder."""
        y = self.latent(x)
        a, b, _ = self.side_parameters(y)
        return self.quantize(self.transform(y, a, b))[1]

    # ------------------------------------------------------------------ stream
    def compress_padded(self, x: Tensor) -> tuple[list[bytes], bytes]:
        y = self.latent(x)
        a, b, t = self.side_parameters(y)
        strings = self.entropy_code(self.transform(y, a, b))
        steps = self.decoding["steps"] or 0
        side = self._side.pack(*a[0].tolist(), *b[0].tolist(), int(t[0]), steps)
        return strings, side

    def decompress_padded(
        self, strings: Sequence[bytes], side: bytes, size: tuple[int, int]
    ) -> Tensor:
        a, b, t, steps = self._read_side(side)
        height, width = size
        z_hat = self.entropy_decode(strings, (height // VAE_STRIDE, width // VAE_STRIDE))
        y_t = self.inverse(z_hat, a.to(self.device), b.to(self.device))
        return self.decode_latent(y_t, t, steps)

    def _read_side(self, side: bytes) -> tuple[Tensor, Tensor, Tensor, int | None]:
        if len(side) != self._side.size:
            raise BitstreamError(
                f"foundation side information must be {self._side.size} bytes, got {len(side)}"
            )
        *values, t, steps = self._side.unpack(side)
        c = self.latent_channels
        a, b = torch.tensor([values[:c]]), torch.tensor([values[c:]])
        low, high = self.scale_limits
        if not (torch.isfinite(a).all() and (a >= low).all() and (a <= high).all()):
            raise BitstreamError(
                f"invalid foundation decoding settings: quantisation scales {values[:c]} outside "
                f"[{low}, {high}]"
            )
        if not (torch.isfinite(b).all() and (b.abs() <= self.offset_limit).all()):
            raise BitstreamError(
                f"invalid foundation decoding settings: quantisation offsets {values[c:]} outside "
                f"±{self.offset_limit}"
            )
        if t > self.max_timestep or steps > self.max_timestep + 1:
            raise BitstreamError(
                f"invalid foundation decoding settings: start timestep {t} or {steps} decoding "
                f"passes beyond max_timestep "
                f"{self.max_timestep}"
            )
        return a, b, torch.tensor([t]), steps or None


class FoundationModule(LatentDiffusionCodec):
    """The recipe of Relic et al.: P_φ and the entropy model trained through the frozen SD."""

    num_strings = 2  # ẑ (space-channel context), its hyper-latent

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        lmbdas: Sequence[float] = (1.0, 5.0, 10.0, 20.0),
        lmbda_sampling: str = "sample",
        encode_lmbda: float = 5.0,
        mse_scale: float = 1.0,
        max_timestep: int = 300,
        estimator_widths: Sequence[int] = (64, 128, 256),
        estimator_kernel: int = 3,
        lmbda_input: str = "log",
        scale_range: Sequence[float] = (1 / 32, 32.0),
        offset_bound: float = 8.0,
        init_scale: float = 1.0,
        init_timestep: int = 76,
        groups: Sequence[int] = (2, 2),
        hyper_channels: int = 128,
        side_channels: int = 128,
        context_channels: int = 64,
        decode_steps: int | None = None,
        gradient_checkpointing: bool = True,
        bf16: bool = True,
        lr: float = 1e-4,
        aux_lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        clip_grad_norm: float | None = 1.0,
    ) -> None:
        # checked before the backbone is loaded
        if lmbda_sampling not in ("sample", "batch"):
            raise ValueError(f"model.lmbda_sampling must be sample or batch, got {lmbda_sampling}")
        if not lmbdas or any(not (math.isfinite(v) and v > 0) for v in lmbdas):
            raise ValueError(f"model.lmbdas must be positive numbers, got {list(lmbdas)}")
        if not 0 < init_timestep < max_timestep:
            raise ValueError(f"model.init_timestep must be in (0, {max_timestep})")
        super().__init__(
            backbone,
            max_timestep,
            decode_steps,
            scale_limits=tuple(scale_range),
            offset_limit=offset_bound,
            bf16=bf16,
            lr=lr,
            aux_lr=aux_lr,
            weight_decay=weight_decay,
            lr_milestones=lr_milestones,
            lr_gamma=lr_gamma,
            clip_grad_norm=clip_grad_norm,
        )
        self.save_hyperparameters()
        self.register_buffer("lmbdas", torch.tensor([float(v) for v in lmbdas]), persistent=False)
        self.encoding = self.checked_encoding({"lmbda": encode_lmbda})
        c = self.latent_channels
        self.estimator = ParameterEstimator(
            latent_channels=c,
            widths=estimator_widths,
            kernel_size=estimator_kernel,
            lmbda_input=lmbda_input,
            lmbda_reference=math.exp(sum(math.log(v) for v in lmbdas) / len(lmbdas)),
            scale_range=scale_range,
            offset_bound=offset_bound,
            init_scale=init_scale,
            init_fraction=init_timestep / max_timestep,
        )
        self.entropy_model = checkerboard_hyperprior(
            channels=c,
            groups=groups,
            hyper_channels=hyper_channels,
            side_channels=side_channels,
            context_channels=context_channels,
        )
        if gradient_checkpointing:  # diffusers' blocks checkpoint only when grad is enabled
            self.backbone.unet.enable_gradient_checkpointing()
            self.backbone.vae.enable_gradient_checkpointing()
        nets = (self.estimator, self.entropy_model)
        counts = [sum(p.numel() for p in net.parameters()) for net in nets]
        rank_zero_info(
            f"Foundation codec: trainable P_φ {counts[0] / 1e6:.2f} M + entropy model "
            f"{counts[1] / 1e6:.2f} M = {sum(counts) / 1e6:.2f} M parameters (paper: 36 M)"
        )

    # ------------------------------------------------------------------ options
    def checked_encoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """lmbda: the rate-distortion weight P_φ is conditioned on (positive, finite)."""
        lmbda = options["lmbda"]
        if not (_is_number(lmbda) and math.isfinite(lmbda) and lmbda > 0):
            raise ConfigError(f"encoding lmbda must be a positive number, got {lmbda!r}")
        return {"lmbda": float(lmbda)}

    # ------------------------------------------------------------------ parameters
    def estimate(self, y: Tensor, lmbda: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """P_φ in fp32 -> (a, b, continuous t = s · max_timestep) with gradients."""
        with entropy_fp32(y.device.type):
            scale, offset, fraction = self.estimator(y.float(), lmbda.float())
        return scale, offset, fraction * self.max_timestep

    def side_parameters(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lmbda = torch.full((y.shape[0],), self.encoding["lmbda"], device=y.device)
        a, b, t = self.estimate(y, lmbda)
        return _fp16(a), _fp16(b), t.round().long()

    def quantize(self, v: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.entropy_model(v)
        return out["y_hat"], out["likelihoods"]

    def entropy_code(self, v: Tensor) -> list[bytes]:
        return [item_strings[0] for item_strings in self.entropy_model.compress(v)["strings"]]

    def entropy_decode(self, strings: Sequence[bytes], shape: tuple[int, int]) -> Tensor:
        height, width = shape
        hyper = (height // HYPER_STRIDE, width // HYPER_STRIDE)
        out = self.entropy_model.decompress([[s] for s in strings], {"y": shape, "hyper": hyper})
        return out["y_hat"]

    # ------------------------------------------------------------------ training
    def draw_lmbdas(self, batch: int) -> Tensor:
        """λ per sample (or one per update) drawn uniformly from `lmbdas`."""
        count = batch if self.hparams.lmbda_sampling == "sample" else 1
        index = torch.randint(len(self.lmbdas), (count,), device=self.lmbdas.device)
        return self.lmbdas[index].expand(batch)

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training: the single-pass recipe at random λ; eval: the real codec at the encoding λ."""
        if not self.training:
            out = self.coded_pass(x)
            lmbda = torch.full((x.shape[0],), self.encoding["lmbda"], device=x.device)
            return {**out, "lmbda": lmbda}
        y = self.latent(x)
        lmbda = self.draw_lmbdas(x.shape[0])
        a, b, t = self.estimate(y, lmbda)
        coded = self.entropy_model(self.transform(y, a, b))
        y_t = self.inverse(coded["y_hat"], a, b)
        eps = self.noise_prediction(y_t, t)
        alpha = continuous_alpha_cumprod(self.backbone.alphas_cumprod, t).view(-1, 1, 1, 1)
        y0 = x0_from_eps(y_t, eps, alpha)
        return {
            "x_hat": self.vae_decode(y0),
            "likelihoods": coded["likelihoods"],
            "lmbda": lmbda,
            "t": t,
            "a": a,
            "y": y,
            "y_t": y_t,
            "y0": y0,
        }

    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        """mean_i(bpp_i + λ_i · mse_scale · MSE_i), images in [0, 1]."""
        bpp = _bits_per_image(out["likelihoods"]) / (x.shape[2] * x.shape[3])
        mse = (out["x_hat"].float() - x.float()).pow(2).flatten(1).mean(1)
        loss = bpp + out["lmbda"] * self.hparams.mse_scale * mse
        return {
            "loss": loss.mean(),
            "bpp": bpp.mean(),
            "mse": mse.mean(),
            "timestep": out["t"].float().mean(),
        }


class NaiveFoundationModule(LatentDiffusionCodec):
    """Fig. 2's baseline: the SD latent quantised with fixed a, b onto the integer grid, zlib
    instead of a learned entropy model, and t denoising steps; nothing to train.

    a (`scale`), b (`offset`) and t (`timestep`) are encoding options, so one model sweeps them
    (`eval.py encoding='{scale: [0.5, 1, 2], timestep: [22, 76, 202]}'`); they travel in the
    same side information as the learned codec's. The defaults pair a = 1 with the noise-matched
    t = 76 (see `modules.foundation`). Symbols are little-endian int16, channel-major, deflated
    at `zlib_level`; the estimated rate beside the real one is the per-image, per-channel
    empirical entropy of the symbols (what an ideal order-0 coder would spend).
    """

    num_strings = 1  # the deflated symbols

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        scale: float = 1.0,
        offset: float = 0.0,
        timestep: int = 76,
        max_timestep: int = 999,
        decode_steps: int | None = None,
        zlib_level: int = 9,
        bf16: bool = True,
    ) -> None:
        super().__init__(
            backbone,
            max_timestep,
            decode_steps,
            scale_limits=(1 / _FP16_LIMIT, _FP16_LIMIT),
            offset_limit=_FP16_LIMIT,
            bf16=bf16,
        )
        self.save_hyperparameters()
        if not 0 <= zlib_level <= 9:
            raise ValueError(f"model.zlib_level must be in [0, 9], got {zlib_level}")
        self.encoding = self.checked_encoding(
            {"scale": scale, "offset": offset, "timestep": timestep}
        )

    def checked_encoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """scale a in [1/1024, 1024], offset |b| <= 1024 (both as fp16), timestep in
        [0, max_timestep]."""
        scale, offset, timestep = options["scale"], options["offset"], options["timestep"]
        numbers = all(_is_number(v) for v in (scale, offset))
        low, high = self.scale_limits
        if not (numbers and low <= scale <= high and abs(offset) <= self.offset_limit):
            raise ConfigError(
                f"encoding scale must be in [{low}, {high}] and |offset| <= {self.offset_limit}, "
                f"got {scale!r}, {offset!r}"
            )
        if (
            isinstance(timestep, bool)
            or not isinstance(timestep, int)
            or not (0 <= timestep <= self.max_timestep)
        ):
            raise ConfigError(
                f"encoding timestep must be an integer in [0, {self.max_timestep}], "
                f"got {timestep!r}"
            )
        scale, offset = (float(_fp16(torch.tensor(float(v)))) for v in (scale, offset))
        return {"scale": scale, "offset": offset, "timestep": timestep}

    def side_parameters(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (y.shape[0], self.latent_channels)
        a = torch.full(shape, self.encoding["scale"], device=y.device)
        b = torch.full(shape, self.encoding["offset"], device=y.device)
        return a, b, torch.full((y.shape[0],), self.encoding["timestep"], device=y.device)

    def quantize(self, v: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z_hat = v.round()
        return z_hat, {"z": _empirical_likelihoods(z_hat)}

    def entropy_code(self, v: Tensor) -> list[bytes]:
        symbols = v.round()
        if symbols.abs().max() > np.iinfo(_SYMBOLS).max:
            raise ValueError(
                f"quantised latent exceeds int16 (max |ẑ| = {float(symbols.abs().max())}); "
                "use a smaller encoding scale"
            )
        array = symbols.to(torch.int16).cpu().numpy().astype(_SYMBOLS)
        return [zlib.compress(array.tobytes(), self.hparams.zlib_level)]

    def entropy_decode(self, strings: Sequence[bytes], shape: tuple[int, int]) -> Tensor:
        expected = self.latent_channels * shape[0] * shape[1] * _SYMBOLS.itemsize
        inflater = zlib.decompressobj()
        try:  # bounded: a crafted stream cannot inflate beyond the expected size
            raw = inflater.decompress(strings[0], expected + 1)
        except zlib.error as exc:
            raise BitstreamError(f"naive foundation payload is not zlib data ({exc})") from exc
        if len(raw) != expected or not inflater.eof or inflater.unused_data:
            raise BitstreamError(
                f"naive foundation payload holds {len(raw)} bytes, expected {expected}"
            )
        symbols = np.frombuffer(raw, dtype=_SYMBOLS).reshape(1, self.latent_channels, *shape)
        return torch.from_numpy(symbols.astype(np.float32)).to(self.device)

    def forward(self, x: Tensor) -> dict[str, Any]:
        """The coded pass (nothing is trained)."""
        return self.coded_pass(x)

    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        """Rate and MSE for logging; nothing is optimised, so the loss is the rate."""
        bpp = _bits_per_image(out["likelihoods"]) / (x.shape[2] * x.shape[3])
        mse = (out["x_hat"].float() - x.float()).pow(2).flatten(1).mean(1)
        return {"loss": bpp.mean(), "bpp": bpp.mean(), "mse": mse.mean()}


def _empirical_likelihoods(z_hat: Tensor) -> Tensor:
    """Per image and channel, each symbol's relative frequency in that channel."""
    flat = z_hat.flatten(2)
    likelihoods = torch.empty_like(flat)
    for i in range(flat.shape[0]):
        for c in range(flat.shape[1]):
            _, inverse, counts = flat[i, c].unique(return_inverse=True, return_counts=True)
            likelihoods[i, c] = counts[inverse].float() / flat.shape[2]
    return likelihoods.view_as(z_hat)

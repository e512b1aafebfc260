"""CDC (Yang & Mandt, NeurIPS 2023): lossy compression with a conditional diffusion decoder.

A mean-scale hyperprior compressor codes the image; its context decoder turns ŷ into four
multi-scale maps that condition a pixel-space U-Net denoiser. The decoder runs DDIM from
x_N = 0 (deterministic) or x_N ~ N(0, γ²I) seeded from the stream.

One module holds both published parameterisations (`prediction`):
    "x":       cosine schedule, N = 8193, the U-Net predicts x0, D = min(SNR, 5)·‖x0 − x̂0‖²
    "epsilon": linear schedule, N = 20000, the U-Net predicts ε, D = |ε − ε̂|
Loss β·bpp + (1 − ρ)·D + ρ·LPIPS-VGG(x̂0, x0). Training starts with a warm-up stage (β = 1e-6,
ρ = 0) for `warmup_steps`, then the target β and ρ, in one resumable run.

Learning rate: `lr`·`lr_gamma` per milestone, floored at `lr_floor` (paper: 5e-5, ×0.8 every 100K
steps, clipped at 2e-5; the official ε config: 4e-5, ×0.9, floor 0.5·lr). The milestones count
from the start of each stage, so the target stage of the one-run recipe and a run started with
`init_from=<warm-up> model.warmup_steps=0` follow the same schedule step for step.
Decoding: DDIM with `decode_steps` (paper: 17 for X, 500 for ε, App. H); validation with
`val_steps` (null: the decoding steps), logged as val/decode_steps. The start noise is seeded per
image from a hash of its ŷ (the official code draws fresh noise per image) unless `decode_seed`
fixes one; the seed travels in the stream.

Where this differs from the official code: the time input at sampling is n/N for both
parameterisations (the official ε sampler feeds i/S, i = position in the S-step schedule, and
does not clamp x̂0; `eps_sampler="official"` decodes so, as imported ε checkpoints do by
default, see scripts/import_official.py); the learning rate decays per 100K steps as
the paper says (the official scheduler steps every iteration after 100K); LPIPS runs in eval
mode (the official lin-layer dropout is active); x̂0 of the ε model is clamped to [−1, 1] when
decoding; and the stream is really entropy-coded.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modules.base import CodecModule, bits_per_pixel, pad_to_multiple, psnr
from modules.diffusion import (
    ddim_indices,
    ddim_sample,
    eps_from_x0,
    make_alphas_cumprod,
    q_sample,
    snr,
    x0_from_eps,
)
from modules.entropy import BitstreamError
from modules.metrics.lpips import build_lpips
from modules.nets import CDCCompressor, ConditionalUNet
from modules.utils import ConfigError

#: side information: decoding steps (u16), γ (fp16), decoder seed (u32)
_SIDE = struct.Struct("<HeI")
#: per parameterisation: noise schedule, training steps, context channels of the finest level
VARIANTS = {"x": ("cosine", 8193, 64), "epsilon": ("linear", 20000, 3)}
#: ε decoding: "matched" (time input n/N as in training, x̂0 clamped) or "official" (i/S, no
#: clamp, as the official ε test script)
EPS_SAMPLERS = ("matched", "official")


class CDCModule(CodecModule):
    """Conditional diffusion codec with X- or ε-prediction."""

    method = "cdc"
    num_strings, side_bytes = 2, _SIDE.size  # y, z; steps, γ, seed

    def __init__(
        self,
        prediction: str = "x",
        beta: float = 0.0032,
        rho: float = 0.0,
        warmup_steps: int = 0,
        warmup_beta: float = 1e-6,
        snr_clip: float = 5.0,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 3, 4, 5, 6),
        compressor_dim: int = 64,
        decode_steps: int = 17,
        decode_gamma: float = 0.0,
        decode_seed: int | None = None,
        val_steps: int | None = None,
        eps_sampler: str = "matched",
        lpips_pretrained_backbone: bool = True,
        weights_dir: str | None = None,
        gradient_checkpointing: bool = False,
        lr: float = 5e-5,
        aux_lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.8,
        clip_grad_norm: float | None = 1.0,
        lr_floor: float | None = None,
    ) -> None:
        super().__init__(
            lr, aux_lr, weight_decay, lr_milestones, lr_gamma, clip_grad_norm, lr_floor
        )
        self.save_hyperparameters()
        if prediction not in VARIANTS:
            raise ValueError(
                f"model.prediction must be one of {sorted(VARIANTS)}, got {prediction!r}"
            )
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"model.rho must be in [0, 1), got {rho}")
        if eps_sampler not in EPS_SAMPLERS:
            raise ValueError(
                f"model.eps_sampler must be one of {EPS_SAMPLERS}, got {eps_sampler!r}"
            )
        schedule, self.num_train_steps, finest_context = VARIANTS[prediction]
        alphas_cumprod = make_alphas_cumprod(schedule, self.num_train_steps)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("snr", snr(alphas_cumprod).float(), persistent=False)
        self._alphas_cumprod64 = alphas_cumprod  # the sampler's coefficients, in float64
        self.decoding = self.checked_decoding(
            {"steps": decode_steps, "gamma": decode_gamma, "seed": decode_seed}
        )
        if val_steps is not None:
            self.checked_decoding({**self.decoding, "steps": val_steps})

        self.compressor = CDCCompressor(dim=compressor_dim, out_channels=finest_context)
        self.unet = ConditionalUNet(
            dim=dim,
            dim_mults=dim_mults,
            context_channels=self.compressor.context_channels,
            gradient_checkpointing=gradient_checkpointing,
        )

    def setup(self, stage: str) -> None:
        """Build the LPIPS loss network before training; loading and decoding never need it."""
        if stage == "fit" and self.hparams.rho > 0:
            self._lpips()

    def _lpips(self) -> torch.nn.Module:
        if "lpips" not in self._frozen:
            net = build_lpips(
                "vgg", self.hparams.weights_dir, self.hparams.lpips_pretrained_backbone
            )
            self.freeze("lpips", net.to(self.device))
        return self.lpips

    # ------------------------------------------------------------------ decoding options
    def checked_decoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """DDIM steps, start noise γ and noise seed (None: derived per image from ŷ), as the
        stream will carry them (γ in fp16), so that the eval forward equals
        decompress(compress(x))."""
        steps, gamma, seed = options["steps"], options["gamma"], options["seed"]
        try:
            ddim_indices(self.num_train_steps, steps)
        except ValueError as exc:
            raise ConfigError(f"decoding steps: {exc}") from exc
        valid_seed = seed is None or 0 <= seed < 2**32
        if not (math.isfinite(gamma) and 0 <= gamma < 65504) or not valid_seed:
            raise ConfigError(
                f"decoding gamma must be in [0, 65504) and seed 32-bit, got {gamma}, {seed}"
            )
        steps, gamma, _ = _SIDE.unpack(_SIDE.pack(steps, gamma, seed or 0))
        return {"steps": steps, "gamma": gamma, "seed": seed}

    # ------------------------------------------------------------------ training
    def training_phases(self) -> list[tuple[int, str]]:
        """The warm-up stage, then the target rate (as `stage_weights`)."""
        hp = self.hparams
        return [
            (0, f"warm-up: β = {hp.warmup_beta:g}, ρ = 0, lr {hp.lr * self.lr_factor(0):g}"),
            (
                hp.warmup_steps,
                f"target rate: β = {hp.beta:g}, ρ = {hp.rho:g}, "
                f"lr {hp.lr * self.lr_factor(hp.warmup_steps):g}",
            ),
        ]

    def stage_weights(self) -> tuple[float, float]:
        """(β, ρ) at the current step: the warm-up stage, then the target."""
        if self.global_step < self.hparams.warmup_steps:
            return self.hparams.warmup_beta, 0.0
        return self.hparams.beta, self.hparams.rho

    def lr_factor(self, step: int) -> float:
        """The base schedule with its milestones counted from the start of the current stage
        (the warm-up at 0, the target stage at `warmup_steps`)."""
        warmup = self.hparams.warmup_steps
        return super().lr_factor(step - warmup if step >= warmup else step)

    def _denoising_pass(
        self, x: Tensor, context: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """One denoising step at a random training index n for x in [−1, 1]."""
        n = torch.randint(
            0, self.num_train_steps, (x.shape[0],), device=x.device, generator=generator
        )
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        alpha = self.alphas_cumprod[n].view(-1, 1, 1, 1)
        x_t = q_sample(x, noise, alpha)
        output = self.unet(x_t, n.float() / self.num_train_steps, context)
        if self.hparams.prediction == "x":
            x0_hat, eps_hat = output, eps_from_x0(x_t, output, alpha)
        else:
            x0_hat, eps_hat = x0_from_eps(x_t, output, alpha), output
        return {"x0_hat": x0_hat, "eps_hat": eps_hat, "noise": noise, "n": n}

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training: one denoising step; eval: the full decoder. x in [0, 1]."""
        compressed = self.compressor(2 * x - 1)
        if not self.training:
            decoding = self.decoding_for(compressed["y_hat"])
            x_hat = self.decode(compressed["context"], **decoding)
            return {"x_hat": x_hat, "likelihoods": compressed["likelihoods"]}
        out = self._denoising_pass(2 * x - 1, compressed["context"])
        x_hat = (out["x0_hat"].detach().clamp(-1, 1) + 1) / 2
        return {**out, "x_hat": x_hat, "likelihoods": compressed["likelihoods"]}

    def likelihoods(self, x: Tensor) -> dict[str, Tensor]:
        return self.compressor(2 * x - 1)["likelihoods"]

    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        beta, rho = self.stage_weights()
        target = 2 * x - 1
        bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        if self.hparams.prediction == "x":
            weight = self.snr[out["n"]].clamp(max=self.hparams.snr_clip)
            per_image = (out["x0_hat"].float() - target).pow(2).flatten(1).mean(1)
            distortion = (weight * per_image).mean()
        else:
            distortion = F.l1_loss(out["eps_hat"].float(), out["noise"].float())
        terms = {"bpp": bpp, "distortion": distortion}
        loss = beta * bpp + (1 - rho) * distortion
        if rho > 0:
            x0_hat = out["x0_hat"]
            if self.hparams.prediction == "epsilon":
                x0_hat = x0_hat.clamp(-1, 1)
            terms["lpips"] = self._lpips()(x0_hat.float(), target).mean()
            loss = loss + rho * terms["lpips"]
        return {"loss": loss, **terms}

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """RD loss at fixed random draws, plus bpp and PSNR of the decoder output with
        `val_steps` (null: the decoding steps), logged as val/decode_steps."""
        x = pad_to_multiple(batch, self.pad_multiple)
        compressed = self.compressor(2 * x - 1)
        generator = torch.Generator(x.device).manual_seed(batch_idx)
        out = self._denoising_pass(2 * x - 1, compressed["context"], generator)
        terms = self.rd_loss({**out, "likelihoods": compressed["likelihoods"]}, x)
        decoding = self.decoding_for(compressed["y_hat"])
        decoding["steps"] = self.hparams.val_steps or decoding["steps"]
        x_hat = self.decode(compressed["context"], **decoding)
        terms["decode_steps"] = torch.tensor(float(decoding["steps"]))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        self.log("val/psnr", psnr(x_hat, x), sync_dist=True, prog_bar=True)

    # ------------------------------------------------------------------ decoding
    def decode(self, context: Sequence[Tensor], steps: int, gamma: float, seed: int) -> Tensor:
        """DDIM from x_N = γ·N(0, I) (seeded; 0 for γ = 0) to an image in [0, 1]."""
        batch, _, height, width = context[0].shape
        shape = (batch, self.unet.channels, height, width)
        device = context[0].device
        if gamma > 0:
            generator = torch.Generator(device).manual_seed(seed)
            x_start = gamma * torch.randn(shape, device=device, generator=generator)
        else:
            x_start = torch.zeros(shape, device=device)
        clamp_x0 = self.hparams.prediction == "x"
        official_eps = not clamp_x0 and self.hparams.eps_sampler == "official"
        indices = ddim_indices(self.num_train_steps, steps).to(device)

        def time_input(index: Tensor) -> Tensor:
            if official_eps:  # the position in the S-step schedule over S
                return torch.searchsorted(indices, index).float() / steps
            return index.float() / self.num_train_steps

        def denoise(x_t: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
            output = self.unet(x_t, time_input(index), context).float()
            alpha = self.alphas_cumprod[index].view(-1, 1, 1, 1)
            if clamp_x0:
                x0_hat = output.clamp(-1, 1)
                return x0_hat, eps_from_x0(x_t, x0_hat, alpha)
            x0_hat = x0_from_eps(x_t, output, alpha)
            return (x0_hat if official_eps else x0_hat.clamp(-1, 1)), output

        x0 = ddim_sample(denoise, self._alphas_cumprod64, indices, x_start)
        return (x0.clamp(-1, 1) + 1) / 2

    def compress_padded(self, x: Tensor) -> tuple[list[bytes], bytes]:
        out = self.compressor.compress(2 * x - 1)
        decoding = self.decoding_for(out["y_hat"])
        side = _SIDE.pack(decoding["steps"], decoding["gamma"], decoding["seed"])
        return [item_strings[0] for item_strings in out["strings"]], side

    def decompress_padded(
        self, strings: Sequence[bytes], side: bytes, size: tuple[int, int]
    ) -> Tensor:
        steps, gamma, seed = _SIDE.unpack(side)
        if not 1 <= steps <= self.num_train_steps or not (math.isfinite(gamma) and gamma >= 0):
            raise BitstreamError(f"invalid CDC decoding settings: {steps} steps, gamma {gamma}")
        height, width = size
        shape = {"y": (height // 16, width // 16), "hyper": (height // 64, width // 64)}
        context = self.compressor.decompress([[s] for s in strings], shape)["context"]
        return self.decode(context, steps, gamma, seed)

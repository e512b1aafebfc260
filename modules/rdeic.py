"""RDEIC (Li et al., TCSVT 2025): relay residual diffusion on a frozen Stable Diffusion 2.1-base.

The sender runs the frozen SD VAE encoder and compresses its 512-channel feature (VQ hyper-latent,
space-channel context model, real rANS). The receiver decodes a control feature and a compressed
latent z_c, starts the reverse diffusion at N = 299 from z_N = √ᾱ_N z_c + √(1−ᾱ_N) ε (relay
residual diffusion), denoises in 2 or 5 respaced DDPM steps with the frozen SD UNet steered by a
trainable one-directional ControlNet-XS branch, and decodes with the frozen VAE.

Recipe (one resumable run; a stage with 0 steps is skipped):
    stage 1a  `initial_steps` at `initial_lmbda`, lr `lr`          (paper: 100K, λ = 2, 1e-4)
    stage 1b  `stage1_steps` at `lmbda`, lr `lr`·`lr_gamma`          (paper: 100K, 2e-5)
    stage 1 loss: λ·‖x̂0 − z0‖² + bpp + L_VQ + λ·‖z_c − z0‖², x̂0 from one relay-noised step
    stage 2   `stage2_steps` through the whole `fixed_steps` sampler and the VAE decoder
              (paper: 100K, 2e-5, 256² crops): λ·MSE + 0.5λ·LPIPS-Alex + λ·‖z_c − z0‖² + bpp + L_VQ
`fixed_steps` is 2 for λ ≥ 1 and 5 below (the rate points of the official results.xlsx: its
"RDEIC" rows are the 2-step models at λ = 2, 1 and the 5-step ones at λ = 0.5, 0.25, 0.1).
Validation decodes with `stage1_val_steps` (official: 5) in stage 1 and the decoding steps in
stage 2. With `gradient_checkpointing` every UNet + control pass that trains is checkpointed, in
stage 1 as in stage 2 (the official UNet and control module checkpoint in every stage).
Decoding: ε = ε_sd + s·(ε_θ − ε_sd) (detail control; s = 1 is one UNet call per step); steps,
s and the noise seed are side information in the stream and eval options. The seed is derived
from each image's decoded latent z_c unless `decode_seed` fixes one (the official code draws fresh
noise per image).

Where this differs from the official code (reference §13): the respaced DDPM sampler is used for
decoding (the official DDIM path is mis-scheduled); the guidance scale is a float; weights load
strictly; bpp divides by the original image size and counts the VQ indices; stage 2 takes a random
256² crop of each 512² training crop (one data pipeline for the whole run, see `stage2_crop`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from modules.base import CodecModule, bits_per_pixel, pad_to_multiple, psnr
from modules.diffusion import (
    load_backbone,
    q_sample,
    relay_coefficient,
    relay_noise,
    relay_start,
    respaced_ddpm_sample,
    respaced_timesteps,
    x0_from_eps,
)
from modules.entropy import BitstreamError
from modules.metrics.lpips import build_lpips
from modules.nets import ControlModule, RDEICCompressor, guided_noise_prediction
from modules.utils import ConfigError

#: side information: decoding steps (u16), guidance scale (f32), decoder seed (u32)
_SIDE = struct.Struct("<HfI")


class RDEICModule(CodecModule):
    """RDEIC: compressed-feature codec + control module on a frozen SD 2.1 backbone."""

    method = "rdeic"
    num_strings, side_bytes = 2, _SIDE.size  # y, VQ indices; steps, guidance, seed

    def __init__(
        self,
        lmbda: float = 2.0,
        backbone: dict[str, Any] | None = None,
        channels: int = 256,
        groups: Sequence[int] = (8, 8, 8, 8, 16, 16, 32, 32, 64, 64),
        num_codes: int = 16384,
        hint_channels: int = 256,
        vq_prior: str = "uniform",
        context: str = "shared",
        control_ratio: float = 0.2,
        relay_step: int = 299,
        initial_lmbda: float = 2.0,
        initial_steps: int = 100000,
        stage1_steps: int = 100000,
        stage2_steps: int = 100000,
        fixed_steps: int = 2,
        stage2_crop: int = 256,
        lpips_weight: float = 0.5,
        lpips_pretrained_backbone: bool = True,
        weights_dir: str | None = None,
        decode_steps: int | None = None,
        decode_guidance: float = 1.0,
        decode_seed: int | None = None,
        stage1_val_steps: int = 5,
        gradient_checkpointing: bool = True,
        bf16: bool = True,
        lr: float = 1e-4,
        aux_lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] | None = None,
        lr_gamma: float = 0.2,
        clip_grad_norm: float | None = None,
    ) -> None:
        if lr_milestones is None:  # 1e-4 for stage 1a, then 2e-5 (the paper's schedule)
            lr_milestones = (initial_steps,)
        super().__init__(lr, aux_lr, weight_decay, lr_milestones, lr_gamma, clip_grad_norm)
        self.save_hyperparameters()
        for name, steps in [("initial", initial_steps), ("stage1", stage1_steps)]:
            if steps < 0 or stage2_steps < 0:
                raise ValueError(f"model.{name}_steps must be >= 0")
        backbone = self.freeze("backbone", load_backbone(**(backbone or {})))
        alphas_cumprod = backbone.alphas_cumprod
        if not 0 < relay_step < len(alphas_cumprod):
            raise ValueError(f"model.relay_step must be in (0, {len(alphas_cumprod)})")
        self.relay = relay_coefficient(alphas_cumprod, relay_step)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.decoding = self.checked_decoding(
            {
                "steps": decode_steps or fixed_steps,
                "guidance": decode_guidance,
                "seed": decode_seed,
            }
        )
        respaced_timesteps(fixed_steps, relay_step + 1)  # validates fixed_steps
        respaced_timesteps(stage1_val_steps, relay_step + 1)
        self.compressor = RDEICCompressor(
            feature_channels=backbone.feature_channels,
            channels=channels,
            groups=groups,
            num_codes=num_codes,
            latent_channels=backbone.unet.config.in_channels,
            hint_channels=hint_channels,
            vq_prior=vq_prior,
            context=context,
        )
        self.control = ControlModule(
            backbone.unet.config, hint_channels=hint_channels, ratio=control_ratio
        )

    def setup(self, stage: str) -> None:
        """Build the stage-2 LPIPS loss before training; loading and decoding never need it."""
        if stage == "fit" and self.hparams.stage2_steps > 0 and "lpips" not in self._frozen:
            net = build_lpips(
                "alex", self.hparams.weights_dir, self.hparams.lpips_pretrained_backbone
            )
            self.freeze("lpips", net.to(self.device))

    # ------------------------------------------------------------------ numerics
    def _frozen_autocast(self):
        """bf16 for the frozen SD networks on GPU (the entropy path stays fp32 regardless)."""
        return self.backbone.autocast(self.hparams.bf16)

    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the VQ index prior (learned usage prior) and the entropy coders' tables."""
        self.compressor.vq.update()
        return super().update(force=force, update_quantiles=update_quantiles)

    # ------------------------------------------------------------------ decoding options
    def checked_decoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """Sampler steps over [0, relay_step], guidance scale s (float) and noise seed (None:
        derived per image from its decoded latent)."""
        steps, guidance, seed = options["steps"], options["guidance"], options["seed"]
        try:
            respaced_timesteps(int(steps), self.hparams.relay_step + 1)
        except ValueError as exc:
            raise ConfigError(f"decoding steps: {exc}") from exc
        if not math.isfinite(guidance) or not (seed is None or 0 <= seed < 2**32):
            raise ConfigError(f"decoding guidance must be finite and seed 32-bit: {options}")
        steps, guidance, _ = _SIDE.unpack(_SIDE.pack(int(steps), guidance, seed or 0))
        return {"steps": steps, "guidance": guidance, "seed": seed}

    # ------------------------------------------------------------------ stages
    def training_phases(self) -> list[tuple[int, str]]:
        """Stage 1a, 1b and 2 (as `stage` and `lmbda`); empty stages are never logged."""
        hp = self.hparams
        stage1b, stage2 = hp.initial_steps, hp.initial_steps + hp.stage1_steps

        def settings(step: int, lmbda: float) -> str:
            return f"λ = {lmbda:g}, lr {hp.lr * self.lr_factor(step):g}"

        return [
            (0, f"stage 1a: independent-step training ({settings(0, hp.initial_lmbda)})"),
            (stage1b, f"stage 1b: independent-step training ({settings(stage1b, hp.lmbda)})"),
            (
                stage2,
                f"stage 2: fixed-step fine-tuning through {hp.fixed_steps} sampler steps"
                + (f" on {hp.stage2_crop}² crops" if hp.stage2_crop else "")
                + f" ({settings(stage2, hp.lmbda)})",
            ),
        ]

    @property
    def stage(self) -> int:
        """1 (independent-step training) or 2 (fixed-step fine-tuning) at the current step."""
        hp = self.hparams
        return 1 if self.global_step < hp.initial_steps + hp.stage1_steps else 2

    @property
    def lmbda(self) -> float:
        """Distortion weight: `initial_lmbda` during stage 1a, then the target `lmbda`."""
        initial = self.global_step < self.hparams.initial_steps
        return self.hparams.initial_lmbda if initial else self.hparams.lmbda

    # ------------------------------------------------------------------ networks
    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image in [0, 1] -> (scaled 512-ch VAE feature, target latent z0 = posterior sample)."""
        with torch.no_grad(), self._frozen_autocast():
            feature, z0 = self.backbone.encode(2 * x - 1)
        return feature.float(), z0.float()

    def _noise_prediction(
        self,
        z_t: Tensor,
        t: Tensor,
        hint: Tensor,
        guidance: float = 1.0,
        checkpointed: bool = False,
    ) -> Tensor:
        """ε̂ of the frozen UNet steered by the control module (bf16 autocast on GPU, fp32
        out); `checkpointed`: recompute the pass in backward instead of keeping activations."""
        if checkpointed:
            return checkpoint(self._noise_prediction, z_t, t, hint, guidance, use_reentrant=False)
        context = self.backbone.prompt_embedding.expand(z_t.shape[0], -1, -1)
        with self._frozen_autocast():
            eps = guided_noise_prediction(
                self.backbone.unet, self.control, z_t, t, context, hint, guidance
            )
        return eps.float()

    def _decode(
        self,
        z_c: Tensor,
        hint: Tensor,
        steps: int,
        guidance: float = 1.0,
        seed: int | None = None,
        grad: bool = False,
    ) -> Tensor:
        """Relay start at `relay_step`, the respaced DDPM sampler and the frozen VAE decoder ->
        image in [0, 1]. Noise from `seed` (decoding) or the global generator (training);
        `grad`: stage 2, with gradient checkpointing of every UNet pass and of the VAE."""
        generator = None if seed is None else torch.Generator(z_c.device).manual_seed(seed)
        noise = torch.randn(z_c.shape, device=z_c.device, generator=generator)
        z_start = relay_start(z_c, noise, self.backbone.alphas_cumprod, self.hparams.relay_step)
        timesteps = respaced_timesteps(steps, self.hparams.relay_step + 1)
        checkpointed = grad and self.hparams.gradient_checkpointing

        def denoise(z_t: Tensor, t: Tensor) -> Tensor:
            return self._noise_prediction(z_t, t, hint, guidance, checkpointed)

        def vae_decode(z: Tensor) -> Tensor:
            with self._frozen_autocast():
                return self.backbone.decode(z).float()

        z0_hat = respaced_ddpm_sample(
            denoise, z_start, self.backbone.alphas_cumprod, timesteps, generator=generator
        )
        if checkpointed:
            return (checkpoint(vae_decode, z0_hat, use_reentrant=False) + 1) / 2
        return (vae_decode(z0_hat) + 1) / 2

    # ------------------------------------------------------------------ training
    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training: the current stage's pass; eval: the full decoder. x in [0, 1]."""
        if self.training and self.stage == 2 and self.hparams.stage2_crop:
            x = _random_crop(x, self.hparams.stage2_crop)
        feature, z0 = self._encode(x)
        coded = self.compressor(feature)
        out = {
            "x": x,
            "z0": z0,
            "z_c": coded["z_c"],
            "likelihoods": coded["likelihoods"],
            "vq_loss": coded["vq_loss"],
        }
        if not self.training:
            decoding = self.decoding_for(coded["z_c"])
            return {**out, "x_hat": self._decode(coded["z_c"], coded["hint"], **decoding)}
        if self.stage == 1:
            return {**out, **self._relay_step(z0, coded["z_c"], coded["hint"]), "x_hat": None}
        x_hat = self._decode(coded["z_c"], coded["hint"], self.hparams.fixed_steps, grad=True)
        return {**out, "x_hat": x_hat}

    def _relay_step(
        self, z0: Tensor, z_c: Tensor, hint: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Stage 1: one relay-noised step at t ~ U{0..N}; x0-space prediction. The UNet pass
        is checkpointed when it trains and `gradient_checkpointing` is on."""
        t = torch.randint(
            0, self.hparams.relay_step + 1, (z0.shape[0],), device=z0.device, generator=generator
        )
        noise = torch.randn(z0.shape, device=z0.device, generator=generator)
        alpha = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = q_sample(z0, relay_noise(noise, z_c, z0, self.relay), alpha)
        checkpointed = self.hparams.gradient_checkpointing and torch.is_grad_enabled()
        eps = self._noise_prediction(z_t, t, hint, checkpointed=checkpointed)
        return {"z0_hat": x0_from_eps(z_t, eps, alpha)}

    def likelihoods(self, x: Tensor) -> dict[str, Tensor]:
        """Likelihoods of y and of the VQ indices, without running the diffusion decoder."""
        return self.compressor(self._encode(x)[0])["likelihoods"]

    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        """The stage's loss. bpp includes the VQ indices, whose cost has no gradient: the loss
        trains as the official one on y's rate alone."""
        x = out["x"]
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = bits_per_pixel(out["likelihoods"], pixels)
        guide = F.mse_loss(out["z_c"].float(), out["z0"])
        lmbda = self.lmbda
        terms = {"bpp": bpp, "vq_loss": out["vq_loss"], "guide": guide}
        loss = bpp + out["vq_loss"] + lmbda * guide
        if "z0_hat" in out:  # stage 1
            terms["latent_mse"] = F.mse_loss(out["z0_hat"], out["z0"])
            loss = loss + lmbda * terms["latent_mse"]
        else:  # stage 2, images in [-1, 1] as the official objective
            x_hat, target = 2 * out["x_hat"] - 1, 2 * x - 1
            terms["mse"] = F.mse_loss(x_hat, target)
            terms["lpips"] = self.lpips(x_hat, target).mean()
            loss = loss + lmbda * terms["mse"] + self.hparams.lpips_weight * lmbda * terms["lpips"]
        return {"loss": loss, "stage": torch.tensor(float(self.stage)), **terms}

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """Stage-1 terms at fixed random draws, and PSNR of the decoder output with
        `stage1_val_steps` in stage 1 (official: 5) and the decoding steps in stage 2."""
        x = pad_to_multiple(batch, self.pad_multiple)
        feature, z0 = self._encode(x)
        coded = self.compressor(feature)
        generator = torch.Generator(x.device).manual_seed(batch_idx)
        relay = self._relay_step(z0, coded["z_c"], coded["hint"], generator)
        out = {"x": x, "z0": z0, **coded, **relay}
        terms = self.rd_loss(out, x)
        decoding = self.decoding_for(coded["z_c"])
        if self.stage == 1:
            decoding["steps"] = self.hparams.stage1_val_steps
        x_hat = self._decode(coded["z_c"], coded["hint"], **decoding)
        terms["decode_steps"] = torch.tensor(float(decoding["steps"]))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        self.log("val/psnr", psnr(x_hat, x), sync_dist=True, prog_bar=True)

    # ------------------------------------------------------------------ coding
    def compress_padded(self, x: Tensor) -> tuple[list[bytes], bytes]:
        out = self.compressor.compress(self._encode(x)[0])
        decoding = self.decoding_for(out["z_c"])
        side = _SIDE.pack(decoding["steps"], decoding["guidance"], decoding["seed"])
        return [item_strings[0] for item_strings in out["strings"]], side

    def decompress_padded(
        self, strings: Sequence[bytes], side: bytes, size: tuple[int, int]
    ) -> Tensor:
        steps, guidance, seed = _SIDE.unpack(side)
        try:
            self.checked_decoding({"steps": steps, "guidance": guidance, "seed": seed})
        except ConfigError as exc:
            raise BitstreamError(f"invalid RDEIC decoding settings: {exc}") from exc
        height, width = size
        coded = self.compressor.decompress([[s] for s in strings], (height // 64, width // 64))
        return self._decode(coded["z_c"], coded["hint"], steps, guidance, seed)


def _random_crop(x: Tensor, size: int) -> Tensor:
    """A random `size`² crop per image of a batch (stage 2's crops)."""
    height, width = x.shape[-2:]
    size_h, size_w = min(size, height), min(size, width)
    tops = torch.randint(0, height - size_h + 1, (x.shape[0],)).tolist()
    lefts = torch.randint(0, width - size_w + 1, (x.shape[0],)).tolist()
    return torch.stack(
        [img[:, t : t + size_h, s : s + size_w] for img, t, s in zip(x, tops, lefts, strict=True)]
    )

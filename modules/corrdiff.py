"""CorrDiff (Ma, Yang & Liu, ICML 2024): diffusion decoding corrected by a privileged end-to-end
decoder, with the per-step correction weights γ sent as side information.

ELIC's analysis transform is the encoder E (ŷ = Q(E(x₀))), its hyperprior + space-channel
context model is the entropy model, and its synthesis transform is the privileged decoder D
(x̂₀,ₑ = D(ŷ)); all three come from an ELIC checkpoint (`elic_ckpt`) of
`modules.elic.ELICModule` in the layout of `elic.variant`: by default "chandelier", the ELiC
re-implementation whose released λ = 0.004 / 0.008 models the paper starts from
(`scripts/import_official.py elic`); a model trained here with `experiment=elic_l<λ>
model.variant=chandelier` serves as well. The score network μ_θ(x_t, ŷ, t) is ADM's U-Net of
the paper's Table 3 predicting x₀. At every one of the S DDIM steps the sampler uses the
corrected estimate x̂₀,c = γ_t·μ_θ + (1 − γ_t)·D(ŷ) (Eq. 22): the encoder, which sees x₀, picks
γ_t* = argmin_γ LPIPS-VGG(x₀, γ·μ_θ + (1 − γ)·D(ŷ)) (Algorithm 1, greedily per step) and the
decoder replays the trajectory with the received γ's (Algorithm 2).

Recipe (one resumable run; a phase with 0 steps is skipped; `trainer.max_steps` is their sum):
    phase 1  `phase1_steps` (paper: 400K): E, entropy model and D frozen at the ELIC weights,
             μ_θ trains on ‖μ_θ − x₀‖² + 0.16·DISTS(μ_θ, x₀)
    phase 2  `phase2_steps` (400K): everything on that + ‖D(ŷ) − x₀‖² + 0.64·LPIPS-Alex(D(ŷ), x₀)
             + λ_r·R(ŷ)
Adam 5e-5, EMA 0.9999, batch 8, DIV2K 256² crops (configs/experiment/base/corrdiff.yaml).

"Frozen" in phase 1 means no gradient reaches E, the entropy model or D (their forward runs
under no_grad and the quantile loss of the entropy bottleneck is left out), so Adam, which
skips parameters without a gradient, leaves them bit-identical and starts their moments fresh
in phase 2. They are not `freeze()`d: they stay trainable parameters for the whole run, so the
optimizer, the EMA (exact on constant weights) and the checkpoints hold them in both phases,
and DDP needs `find_unused_parameters` during phase 1 (checked at setup).

Choices the paper leaves open, each a config value:
- `condition`: how ŷ conditions μ_θ. "decoder" (default): D(ŷ), clamped to [0, 1] and mapped to
  [−1, 1], concatenated with x_t (6 input channels), as ADM's super-resolution model
  concatenates its upsampled low-resolution image: D(ŷ) is the image-shaped form of ŷ, is
  computed anyway (it is the privileged decoder's output) and adds no parameters; in phase 2 the
  diffusion loss reaches E and D through it. "latent": ŷ itself, upsampled ×16 (nearest), 3 + M
  input channels.
- `unet`: ADM (Table 3): 96 channels, multiples (1, 1, 2, 2, 3), 2 blocks per level, BigGAN
  resampling blocks, scale-shift norm, dropout 0, no attention at any resolution. ADM's code
  always has an attention block in its middle block (empty `attention_resolutions`), and the
  table lists 4 heads, which only that block can use: `mid_attention: true`, 4 heads. Size:
  μ_θ 34.02 M + ELIC 33.79 M (Chandelier layout: E 7.34 M, entropy model 19.12 M, D 7.34 M)
  = 67.81 M against the paper's 73.79 M; 67.48 M without the middle attention, 66.09 M with
  `Elic2022Official`; no reading of the table reaches 73.79 M.
- `schedule`/`num_train_steps`: ADM's linear schedule, β from 1e-4 to 0.02 over 1000 steps
  (float64); t uniform over the 1000 steps; x₀ target; images in [−1, 1] for every loss term.
- `spacing`: the S sampling steps. "strided" (default): guided-diffusion's `ddimS` respacing,
  range(0, 1000, ⌈1000/S⌉) (S = 8: 875, 750, …, 0), what ADM's code does with DDIM;
  "linspace": CDC's linspace(0, 999, S). `clip_denoised`: μ_θ clamped to [−1, 1] when sampling
  (ADM's default).
- `decode_seed`: x_T ~ N(0, I) from this seed, written into the stream (u32). Default None: a
  seed per image derived from its ŷ (`content_seed`, as CDC and RDEIC), so the images of a set
  do not share one x_T (shared noise correlates textures and biases FID/KID).
- `gamma_search`: "gradient" (default, the paper's "vanilla gradient descent provided by
  PyTorch": torch.optim.SGD on γ from `init`, `lr`, clipped to `bounds` after every step) or
  "bounded" (golden-section search over `bounds` after evaluating `init`); both spend
  `evaluations` LPIPS-VGG calls per step and keep the best γ evaluated, so neither is worse than
  `init`. γ is rounded to float16 before the encoder continues its trajectory, so encoder and
  decoder follow the same one. Default bounds [0, 1]: x̂₀,c stays a combination of the two
  estimates (Eq. 19's reading). These are the codec's encoding options (the decoder reads only
  the γ's): `eval.py encoding='{method: bounded, evaluations: [3, 5, 10]}'` sweeps them.
- The output is the last step's x̂₀,c, combined in [0, 1] as γ·(μ_θ + 1)/2 + (1 − γ)·D(ŷ), so
  that γ = 0 gives D(ŷ) and γ = 1 the uncorrected sampler bit for bit.

Decoding modes (Table 1's ablations; they change only the decoder, the stream is the same):
"corrected" (Algorithm 2), "end_to_end" (D(ŷ) alone, γ = 0), "diffusion" (γ = 1 at every
step), "direct" (one μ_θ pass at t = 999 from x_T). Side information: steps (u16), seed (u32)
and one float16 γ per step: 22 bytes at 8 steps, counted in the real bpp.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from modules.base import CodecModule, bits_per_pixel, pad_to_multiple, psnr
from modules.diffusion import (
    ddim_indices,
    ddim_sample,
    eps_from_x0,
    make_alphas_cumprod,
    q_sample,
    strided_ddim_indices,
)
from modules.elic import ELICModule
from modules.entropy import BitstreamError
from modules.metrics.dists import build_dists
from modules.metrics.lpips import build_lpips
from modules.metrics.weights import seeded
from modules.nets import adm_unet
from modules.utils import ConfigError

log = logging.getLogger(__name__)

#: side information: decoding steps (u16) and decoder seed (u32), then one float16 γ per step
_SIDE = struct.Struct("<HI")
MODES = ("corrected", "end_to_end", "diffusion", "direct")
CONDITIONS = ("decoder", "latent")
SPACINGS = {"strided": strided_ddim_indices, "linspace": ddim_indices}
SEARCH_METHODS = ("gradient", "bounded")
#: the paper's ELIC (N, M, groups) and ADM U-Net (Table 3)
ELIC_DEFAULTS = {"N": 192, "M": 320, "groups": (16, 16, 32, 64, 192), "variant": "chandelier"}
UNET_DEFAULTS = {
    "channels": 96,
    "channel_mult": (1, 1, 2, 2, 3),
    "layers_per_block": 2,
    "mid_attention": True,
    "attention_heads": 4,
    "norm_groups": 32,
    "dropout": 0.0,
}
SEARCH_DEFAULTS = {
    "method": "gradient",
    "evaluations": 10,
    "init": 1.0,
    "lr": 1.0,
    "bounds": (0.0, 1.0),
}
#: seed of the untrained perceptual networks (`perceptual_pretrained=False`)
UNTRAINED_SEED = 0
#: the paper's model size (μ_θ + E + entropy model + D, Table 3)
PAPER_PARAMETERS = 73.79e6
_GOLDEN = (math.sqrt(5) - 1) / 2


class CorrDiffModule(CodecModule):
    """CorrDiff: ELIC encoder/entropy model/privileged decoder + ADM x₀-predictor, γ per step."""

    method = "corrdiff"
    pad_multiple = 64
    num_strings, side_bytes = 2, None  # y, z; steps, seed and one γ per step (checked below)

    def __init__(
        self,
        rate_weight: float = 0.1,
        elic: dict[str, Any] | None = None,
        elic_ckpt: str | None = None,
        elic_lmbda: float = 0.008,
        elic_random_init: bool = False,
        condition: str = "decoder",
        unet: dict[str, Any] | None = None,
        schedule: str = "linear",
        num_train_steps: int = 1000,
        spacing: str = "strided",
        clip_denoised: bool = True,
        phase1_steps: int = 400000,
        phase2_steps: int = 400000,
        dists_weight: float = 0.16,
        lpips_weight: float = 0.64,
        decode_mode: str = "corrected",
        decode_steps: int = 8,
        decode_seed: int | None = None,
        gamma_search: dict[str, Any] | None = None,
        perceptual_pretrained: bool = True,
        weights_dir: str | None = None,
        gradient_checkpointing: bool = False,
        lr: float = 5e-5,
        aux_lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        clip_grad_norm: float | None = None,
    ) -> None:
        super().__init__(lr, aux_lr, weight_decay, lr_milestones, lr_gamma, clip_grad_norm)
        self.save_hyperparameters()
        if phase1_steps < 0 or phase2_steps < 0:
            raise ValueError("model.phase1_steps and model.phase2_steps must be >= 0")
        if condition not in CONDITIONS:
            raise ValueError(f"model.condition must be one of {CONDITIONS}, got {condition!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"model.spacing must be one of {sorted(SPACINGS)}, got {spacing!r}")
        self.elic_options = {**ELIC_DEFAULTS, **(elic or {})}
        if elic_ckpt is None and not elic_random_init:
            raise FileNotFoundError(f"model.elic_ckpt is not set: {self._elic_hint()}")
        self.encoding = self.checked_encoding({**SEARCH_DEFAULTS, **(gamma_search or {})})

        # E, entropy model and D: ELIC's networks (weights from elic_ckpt at setup("fit"))
        networks = ELICModule(lmbda=elic_lmbda, **self.elic_options)
        self.g_a, self.g_s, self.latent_codec = networks.g_a, networks.g_s, networks.latent_codec
        latent_channels = self.elic_options["M"]
        self.unet = adm_unet(
            in_channels=3 + (3 if condition == "decoder" else latent_channels),
            **{**UNET_DEFAULTS, **(unet or {})},
        )
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

        alphas_cumprod = make_alphas_cumprod(schedule, num_train_steps)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self._alphas_cumprod64 = alphas_cumprod  # the sampler's coefficients, in float64
        self.decoding = self.checked_decoding(
            {"mode": decode_mode, "steps": decode_steps, "seed": decode_seed}
        )
        self._weights_from_checkpoint = False

    def _elic_hint(self) -> str:
        """How to get the ELIC checkpoint this rate point starts from (for error messages)."""
        experiment = f"elic_l{self.hparams.elic_lmbda:g}"
        return (
            f"CorrDiff starts from a trained ELIC ({experiment}): import the released one "
            f"(python scripts/import_official.py elic --src <ELIC file> --out {experiment}.ckpt "
            f"--lmbda {self.hparams.elic_lmbda:g}) or train it (python train.py "
            f"experiment={experiment} model.variant={self.elic_options['variant']}), then pass "
            f"model.elic_ckpt=<that checkpoint>"
        )

    # ------------------------------------------------------------------ options
    def checked_encoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """The γ search (`model.gamma_search`, or `encoding=` in eval.py): method, LPIPS-VGG
        evaluations per step, initial γ, gradient-descent lr and the float16 bounds of γ."""
        unknown = sorted(set(options) - set(SEARCH_DEFAULTS))
        if unknown:
            raise ConfigError(f"the γ search has {sorted(SEARCH_DEFAULTS)}, not {unknown}")
        try:
            low, high = (float(b) for b in options["bounds"])
            init, lr, evaluations = (
                float(options["init"]),
                float(options["lr"]),
                options["evaluations"],
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"γ search: bounds [low, high], init and lr are numbers ({exc})"
            ) from exc
        if options["method"] not in SEARCH_METHODS:
            raise ConfigError(f"γ search method must be one of {SEARCH_METHODS}")
        if not (-65504 < low < high < 65504) or not low <= init <= high:
            raise ConfigError(
                "γ search needs float16 bounds low < high with init inside, got "
                f"bounds {[low, high]}, init {init}"
            )
        if not (isinstance(evaluations, int) and evaluations >= 1) or not lr > 0:
            raise ConfigError("γ search needs an integer evaluations >= 1 and lr > 0")
        return {**options, "bounds": (low, high), "init": init, "lr": lr}

    def _indices(self, steps: int) -> Tensor:
        """Training indices of the S sampling steps, ascending."""
        return SPACINGS[self.hparams.spacing](self.hparams.num_train_steps, steps)

    def checked_decoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """Decoder mode, DDIM steps and x_T seed (the encoder writes steps and seed)."""
        mode, steps, seed = options["mode"], options["steps"], options["seed"]
        if mode not in MODES:
            raise ConfigError(f"decoding mode must be one of {MODES}, got {mode!r}")
        try:
            self._indices(int(steps))
        except ValueError as exc:
            raise ConfigError(f"decoding steps: {exc}") from exc
        if seed is not None and not 0 <= int(seed) < 2**32:
            raise ConfigError(f"decoding seed must be a 32-bit unsigned integer, got {seed}")
        return {"mode": mode, "steps": int(steps), "seed": None if seed is None else int(seed)}

    # ------------------------------------------------------------------ setup and phases
    @property
    def phase(self) -> int:
        """1 (μ_θ alone) or 2 (everything jointly) at the current global step."""
        return 1 if self.global_step < self.hparams.phase1_steps else 2

    def setup(self, stage: str) -> None:
        """Before training: ELIC weights, the loss networks and the encoder's LPIPS-VGG."""
        if stage != "fit":
            return
        self._check_strategy()
        self._initialise_from_elic()
        counts = self.parameter_counts()
        log.info(
            "CorrDiff parameters: "
            + ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in counts.items())
            + f" (paper: {PAPER_PARAMETERS / 1e6:.2f} M)"
        )
        hp = self.hparams
        if hp.dists_weight > 0:
            self._perceptual("dists")
        if hp.phase2_steps > 0 and hp.lpips_weight > 0:
            self._perceptual("lpips_alex")
        self._perceptual("lpips_vgg")  # the encoder's γ search (validation, RD evaluation)

    def _check_strategy(self) -> None:
        strategy = self.trainer.strategy
        # Lightning keeps DistributedDataParallel's arguments in `_ddp_kwargs`
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", {})
        if (
            self.hparams.phase1_steps > 0
            and isinstance(strategy, DDPStrategy)
            and not ddp_kwargs.get("find_unused_parameters", False)
        ):
            raise ConfigError(
                "CorrDiff's phase 1 leaves E, the entropy model and D without gradients: "
                "with DDP pass trainer.strategy=ddp_find_unused_parameters_true"
            )

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign=False):
        """Load a checkpoint; its E, entropy model and D then take precedence over elic_ckpt."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._weights_from_checkpoint = True
        return result

    def _initialise_from_elic(self) -> None:
        """E, entropy model and D from `elic_ckpt` (strictly), unless weights were loaded."""
        hp = self.hparams
        if self._weights_from_checkpoint:
            log.info("E, entropy model and D come from the loaded checkpoint (init_from)")
            return
        if hp.elic_random_init:
            log.warning(
                "model.elic_random_init=true: E, the entropy model and D start from RANDOM "
                "weights, not from a trained ELIC (smoke runs and tests only)"
            )
            return
        path = Path(hp.elic_ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"model.elic_ckpt={path} does not exist: {self._elic_hint()}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        codec_class = checkpoint.get("codec_class") if isinstance(checkpoint, dict) else None
        if codec_class != f"{ELICModule.__module__}.{ELICModule.__qualname__}":
            raise ConfigError(f"model.elic_ckpt={path} is not an ELIC checkpoint ({codec_class})")
        elic_hparams = checkpoint.get("hyper_parameters", {})
        for key, value in self.elic_options.items():
            theirs = elic_hparams.get(key)
            if _plain(theirs) != _plain(value):
                raise ConfigError(
                    f"model.elic_ckpt={path} has {key}={theirs}, model.elic.{key} is {value}"
                )
        if elic_hparams.get("lmbda") != hp.elic_lmbda:
            log.warning(
                f"model.elic_ckpt={path} was trained at λ={elic_hparams.get('lmbda')}, "
                f"the paper starts this rate point from λ={hp.elic_lmbda}"
            )
        state = checkpoint["state_dict"]
        for name in ("g_a", "g_s", "latent_codec"):
            prefix = f"{name}."
            part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            getattr(self, name).load_state_dict(part)
        log.info(f"E, entropy model and D initialised from {path} (ELIC λ={hp.elic_lmbda})")

    def _perceptual(self, name: str) -> torch.nn.Module:
        """The frozen perceptual network `name` (built once; never checkpointed)."""
        if name not in self._frozen:
            hp = self.hparams
            with seeded(UNTRAINED_SEED):
                if name == "dists":
                    net = build_dists(hp.weights_dir, hp.perceptual_pretrained)
                else:
                    backbone = name.removeprefix("lpips_")
                    net = build_lpips(backbone, hp.weights_dir, hp.perceptual_pretrained)
            self.freeze(name, net.to(self.device))
        return self._frozen[name]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of μ_θ, E, the entropy model and D, and their total (Table 3's size)."""
        parts = {"mu": self.unet, "E": self.g_a, "entropy": self.latent_codec, "D": self.g_s}
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
        return {**counts, "total": sum(counts.values())}

    def training_phases(self) -> list[tuple[int, str]]:
        """Phase 1 and phase 2 (as `phase`); an empty phase is never logged."""
        hp = self.hparams
        phase2 = hp.phase1_steps

        def lr(step: int) -> str:
            return f"lr {hp.lr * self.lr_factor(step):g}"

        return [
            (0, f"phase 1: μ_θ alone, E, entropy model and D frozen ({lr(0)})"),
            (phase2, f"phase 2: E, entropy model, D and μ_θ jointly ({lr(phase2)})"),
        ]

    def aux_loss(self) -> Tensor:
        """The entropy bottleneck's quantile loss, in phase 2 only (phase 1 freezes it)."""
        if self.phase == 1:
            return torch.zeros((), device=self.device)
        return super().aux_loss()

    # ------------------------------------------------------------------ networks
    def _encode(self, x: Tensor) -> dict[str, Any]:
        """ŷ (STE-quantised), its likelihoods and D(ŷ) for images x in [0, 1]."""
        coded = self.latent_codec(self.g_a(x))
        return {**coded, "x_e": self.g_s(coded["y_hat"])}

    def _condition(self, y_hat: Tensor, x_e: Tensor) -> Tensor:
        """What μ_θ sees of ŷ next to x_t (`condition`)."""
        if self.hparams.condition == "decoder":
            return 2 * x_e.clamp(0, 1) - 1
        return F.interpolate(y_hat, scale_factor=ELICModule.y_stride, mode="nearest")

    def _predict_x0(self, x_t: Tensor, t: Tensor, condition: Tensor, sampling: bool) -> Tensor:
        """μ_θ(x_t, ŷ, t): the x₀ prediction in [−1, 1], clamped when `sampling` (and
        `clip_denoised`)."""
        x0 = self.unet(torch.cat([x_t, condition], dim=1), t, return_dict=False)[0].float()
        return x0.clamp(-1, 1) if sampling and self.hparams.clip_denoised else x0

    def _denoising_pass(
        self, target: Tensor, condition: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """μ_θ at a uniform training step t for x₀ = `target` in [−1, 1]."""
        t = torch.randint(
            0,
            self.hparams.num_train_steps,
            (target.shape[0],),
            device=target.device,
            generator=generator,
        )
        noise = torch.randn(target.shape, device=target.device, generator=generator)
        x_t = q_sample(target, noise, self.alphas_cumprod[t].view(-1, 1, 1, 1))
        return {"x0_hat": self._predict_x0(x_t, t, condition, sampling=False), "t": t}

    # ------------------------------------------------------------------ training
    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training: the phase's pass; eval: encoder and decoder (as decompress(compress(x)))."""
        if not self.training:
            coded = self._encode(x)
            return {"x_hat": self._reconstruct(x, coded), "likelihoods": coded["likelihoods"]}
        # phase 1: no gradient reaches E, the entropy model or D
        with nullcontext() if self.phase == 2 else torch.no_grad():
            coded = self._encode(x)
        out = self._denoising_pass(2 * x - 1, self._condition(coded["y_hat"], coded["x_e"]))
        x_hat = (out["x0_hat"].detach().clamp(-1, 1) + 1) / 2
        return {**coded, **out, "x_hat": x_hat}

    def likelihoods(self, x: Tensor) -> dict[str, Tensor]:
        return self.latent_codec(self.g_a(x))["likelihoods"]

    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        """L₁ = ‖μ_θ − x₀‖² + λ_μ·DISTS in phase 1; L₁ + ‖D(ŷ) − x₀‖² + λ_e·LPIPS-Alex(D(ŷ))
        + λ_r·bpp in phase 2. Images in [−1, 1]; bpp over the (padded) batch pixels."""
        hp = self.hparams
        phase = self.phase
        target = 2 * x - 1
        x0_hat = out["x0_hat"].float()
        bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        terms = {"bpp": bpp, "mse": F.mse_loss(x0_hat, target)}
        loss = terms["mse"]
        if hp.dists_weight > 0:
            terms["dists"] = self._perceptual("dists")((x0_hat + 1) / 2, x).mean()
            loss = loss + hp.dists_weight * terms["dists"]
        if phase == 2:
            x_e = 2 * out["x_e"].float() - 1
            terms["mse_e"] = F.mse_loss(x_e, target)
            loss = loss + terms["mse_e"] + hp.rate_weight * bpp
            if hp.lpips_weight > 0:
                terms["lpips_e"] = self._perceptual("lpips_alex")(x_e, target).mean()
                loss = loss + hp.lpips_weight * terms["lpips_e"]
        return {"loss": loss, "phase": torch.tensor(float(phase)), **terms}

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        """The phase's loss at fixed random draws, and PSNR of the corrected reconstruction."""
        x = pad_to_multiple(batch, self.pad_multiple)
        coded = self._encode(x)
        generator = torch.Generator(x.device).manual_seed(batch_idx)
        condition = self._condition(coded["y_hat"], coded["x_e"])
        terms = self.rd_loss({**coded, **self._denoising_pass(2 * x - 1, condition, generator)}, x)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        self.log("val/psnr", psnr(self._reconstruct(x, coded), x), sync_dist=True, prog_bar=True)
        self.log("val/psnr_e", psnr(coded["x_e"], x), sync_dist=True)

    # ------------------------------------------------------------------ γ search
    def _lpips_vgg(self, x_hat: Tensor, x0: Tensor) -> Tensor:
        """Per-image LPIPS-VGG of images in [−1, 1]."""
        return self._perceptual("lpips_vgg")(x_hat, x0).flatten()

    def search_gamma(self, x0: Tensor, mu: Tensor, x_e: Tensor) -> Tensor:
        """γ* = argmin_γ LPIPS-VGG(x₀, γ·μ + (1 − γ)·x_e) per image (all in [−1, 1]) with
        `encoding["evaluations"]` LPIPS calls; returns the best γ evaluated (float32, (B,))."""
        search = self.encoding
        low, high = search["bounds"]
        # the search needs autograd even inside no_grad/inference_mode (coding, validation)
        with torch.inference_mode(False), torch.enable_grad():
            x0, mu, x_e = x0.clone(), mu.clone(), x_e.clone()

            def mixed(gamma: Tensor) -> Tensor:
                g = gamma.view(-1, 1, 1, 1)
                return g * mu + (1 - g) * x_e

            init = torch.full((x0.shape[0],), float(search["init"]), device=x0.device)
            if search["method"] == "gradient":
                return self._gradient_search(mixed, x0, init, search, low, high)
            return self._golden_section_search(mixed, x0, init, search["evaluations"], low, high)

    def _gradient_search(
        self,
        mixed: Callable[[Tensor], Tensor],
        x0: Tensor,
        init: Tensor,
        search: dict[str, Any],
        low: float,
        high: float,
    ) -> Tensor:
        gamma = init.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([gamma], lr=search["lr"])
        best, best_loss = init.clone(), torch.full_like(init, math.inf)
        for _ in range(search["evaluations"]):
            optimizer.zero_grad(set_to_none=True)
            loss = self._lpips_vgg(mixed(gamma), x0)
            better = loss.detach() < best_loss
            best = torch.where(better, gamma.detach(), best)
            best_loss = torch.where(better, loss.detach(), best_loss)
            loss.sum().backward()  # images are independent: d(sum)/dγ_b = dLPIPS_b/dγ_b
            optimizer.step()
            with torch.no_grad():
                gamma.clamp_(low, high)
        return best

    def _golden_section_search(
        self,
        mixed: Callable[[Tensor], Tensor],
        x0: Tensor,
        init: Tensor,
        evaluations: int,
        low: float,
        high: float,
    ) -> Tensor:
        # By hand: scipy's bounded Brent search takes one scalar at a time with a host round
        # trip per evaluation and no fixed budget; this one is batched and spends exactly
        # `evaluations` LPIPS calls (init, the two first interior points, one per shrink).
        def f(gamma: Tensor) -> Tensor:
            with torch.no_grad():
                return self._lpips_vgg(mixed(gamma), x0)

        best, best_loss = init, f(init)

        def keep(point: Tensor, value: Tensor) -> None:
            nonlocal best, best_loss
            better = value < best_loss
            best, best_loss = (
                torch.where(better, point, best),
                torch.where(better, value, best_loss),
            )

        a, b = torch.full_like(init, low), torch.full_like(init, high)
        c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        if evaluations >= 2:
            f_c = f(c)
            keep(c, f_c)
        if evaluations >= 3:
            f_d = f(d)
            keep(d, f_d)
        for _ in range(evaluations - 3):
            left = f_c < f_d  # the minimum lies in [a, d]: drop (d, b]; else drop [a, c)
            a, b = torch.where(left, a, c), torch.where(left, d, b)
            new = torch.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
            f_new = f(new)
            c, d = torch.where(left, new, d), torch.where(left, c, new)
            f_c, f_d = torch.where(left, f_new, f_d), torch.where(left, f_c, f_new)
            keep(new, f_new)
        return best

    # ------------------------------------------------------------------ sampling
    def _sample(
        self,
        condition: Tensor,
        x_e: Tensor,
        steps: int,
        seed: int,
        choose_gamma: Callable[[int, Tensor, Tensor], Tensor],
    ) -> Tensor:
        """DDIM over the S steps from x_T = N(0, I) (seeded) with x̂₀,c = γ·μ_θ + (1 − γ)·D(ŷ);
        `choose_gamma(k, μ_θ, D(ŷ))` gives step k's γ (B,). x_e = D(ŷ) in [0, 1]; returns the
        image in [0, 1]."""
        x_e_signed = 2 * x_e - 1
        generator = torch.Generator(x_e.device).manual_seed(seed)
        x_start = torch.randn(x_e.shape, device=x_e.device, generator=generator)
        last: dict[str, Tensor] = {}
        calls: list[int] = []

        def denoise(x_t: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
            mu = self._predict_x0(x_t, index, condition, sampling=True)
            gamma = choose_gamma(len(calls), mu, x_e_signed).view(-1, 1, 1, 1)
            calls.append(1)
            x0_c = gamma * mu + (1 - gamma) * x_e_signed
            last.update(mu=mu, gamma=gamma)
            return x0_c, eps_from_x0(x_t, x0_c, self.alphas_cumprod[index].view(-1, 1, 1, 1))

        indices = self._indices(steps).to(x_e.device)
        ddim_sample(denoise, self._alphas_cumprod64, indices, x_start)
        gamma = last["gamma"]  # the last x̂₀,c in [0, 1]: γ = 0 gives D(ŷ) bit for bit
        return gamma * (last["mu"] + 1) / 2 + (1 - gamma) * x_e

    def _encoder_trajectory(
        self, x: Tensor, condition: Tensor, x_e: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 1: the corrected trajectory with x visible -> (x̂₀,c in [0, 1], γ's (B, S)
        as float16 values, in sampling order)."""
        x0 = 2 * x - 1
        gammas: list[Tensor] = []

        def choose_gamma(k: int, mu: Tensor, x_e_signed: Tensor) -> Tensor:
            gamma = self.search_gamma(x0, mu, x_e_signed).half().float()
            gammas.append(gamma)
            return gamma

        x_hat = self._sample(condition, x_e, self.decoding["steps"], seed, choose_gamma)
        return x_hat, torch.stack(gammas, dim=1)

    def _decode(
        self,
        condition: Tensor,
        x_e: Tensor,
        steps: int,
        seed: int,
        gammas: Tensor | None,
        mode: str,
    ) -> Tensor:
        """Algorithm 2 (mode "corrected", γ's (B, S)) or one of the ablations -> [0, 1]."""
        if mode == "end_to_end":
            return x_e
        if mode == "direct":
            generator = torch.Generator(x_e.device).manual_seed(seed)
            x_start = torch.randn(x_e.shape, device=x_e.device, generator=generator)
            top = torch.full((x_e.shape[0],), self.hparams.num_train_steps - 1, device=x_e.device)
            return (self._predict_x0(x_start, top, condition, sampling=True) + 1) / 2
        if mode == "diffusion":
            gammas = torch.ones(x_e.shape[0], steps, device=x_e.device)
        return self._sample(condition, x_e, steps, seed, lambda k, mu, x_e_: gammas[:, k])

    def _reconstruct(self, x: Tensor, coded: dict[str, Any]) -> Tensor:
        """What decompress(compress(x)) returns under the current decoding mode, in [0, 1]."""
        x_e = coded["x_e"].clamp(0, 1)
        condition = self._condition(coded["y_hat"], x_e)
        options = self.decoding_for(coded["y_hat"])
        if options["mode"] == "corrected":
            return self._encoder_trajectory(x, condition, x_e, options["seed"])[0]
        return self._decode(
            condition, x_e, options["steps"], options["seed"], None, options["mode"]
        )

    # ------------------------------------------------------------------ coding
    def compress_padded(self, x: Tensor) -> tuple[list[bytes], bytes]:
        out = self.latent_codec.compress(self.g_a(x))
        x_e = self.g_s(out["y_hat"]).clamp(0, 1)
        steps, seed = (self.decoding_for(out["y_hat"])[key] for key in ("steps", "seed"))
        _, gammas = self._encoder_trajectory(x, self._condition(out["y_hat"], x_e), x_e, seed)
        side = _SIDE.pack(steps, seed) + gammas[0].numpy(force=True).astype("<f2").tobytes()
        return [item_strings[0] for item_strings in out["strings"]], side

    def decompress_padded(
        self, strings: Sequence[bytes], side: bytes, size: tuple[int, int]
    ) -> Tensor:
        if len(side) < _SIDE.size:
            raise BitstreamError(f"CorrDiff side information too short: {len(side)} bytes")
        steps, seed = _SIDE.unpack_from(side)
        if len(side) != _SIDE.size + 2 * steps:
            raise BitstreamError(
                f"CorrDiff side information of {steps} steps must be {_SIDE.size + 2 * steps} "
                f"bytes, got {len(side)}"
            )
        try:
            self._indices(steps)
        except ValueError as exc:
            raise BitstreamError(f"invalid CorrDiff decoding settings: {exc}") from exc
        gammas = np.frombuffer(side, dtype="<f2", offset=_SIDE.size).astype(np.float32)
        if not np.isfinite(gammas).all():
            raise BitstreamError(
                f"invalid CorrDiff decoding settings: non-finite γ in {gammas.tolist()}"
            )
        height, width = size
        shape = {
            "y": (height // ELICModule.y_stride, width // ELICModule.y_stride),
            "hyper": (height // ELICModule.z_stride, width // ELICModule.z_stride),
        }
        y_hat = self.latent_codec.decompress([[s] for s in strings], shape)["y_hat"]
        x_e = self.g_s(y_hat).clamp(0, 1)
        gamma = torch.from_numpy(gammas).to(x_e.device)[None]
        condition = self._condition(y_hat, x_e)
        return self._decode(condition, x_e, steps, seed, gamma, self.decoding["mode"])


def _plain(value: Any) -> Any:
    """Sequences as lists, for comparing config values with checkpoint hyper-parameters."""
    return list(value) if isinstance(value, list | tuple) else value

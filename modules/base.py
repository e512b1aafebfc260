"""CodecModule: the codec contract every method implements, and what they share around it.

Contract (CompressAI's, extended to bytes):
    forward(x)       training/estimation pass -> {"x_hat", "likelihoods", ...}
    update(force)    build the entropy coders' CDF tables (and the model fingerprint)
    compress(x)      one image in [0, 1], any size -> bytes (modules.entropy.bitstream container)
    decompress(b)    bytes -> image in [0, 1] of the original size

Subclasses implement `forward`, `rd_loss`, `compress_padded` and `decompress_padded`; this class
pads to the model's multiple and crops back, writes/validates the container, sets up one optimizer
with the entropy bottlenecks' quantiles as a second parameter group, clips only the main group,
logs the RD terms, keeps frozen networks in eval mode and out of checkpoints, checks the
hyper-parameters against the subclass's type hints (a bad config value fails at construction, not
deep in training) and logs one INFO line when a phase of the recipe begins (`training_phases`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import get_scale_table
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from modules.entropy import Bitstream, BitstreamError, fingerprint
from modules.entropy.buffers import resize_entropy_buffers
from modules.utils import ConfigError

log = logging.getLogger(__name__)


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Σ −log2 p over all latents, divided by the number of image pixels (fp32)."""
    total = sum(torch.log(lik.float()).sum() for lik in likelihoods.values())
    return total / (-math.log(2) * num_pixels)


def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Batch-mean PSNR in dB of images in [0, 1] (float, no rounding: a training monitor)."""
    mse = F.mse_loss(x_hat.float().clamp(0, 1), x.float(), reduction="none").flatten(1).mean(1)
    return (-10 * torch.log10(mse.clamp_min(1e-10))).mean()


def content_seed(latent: Tensor) -> int:
    """32-bit decoder seed derived from a decoded latent (a function of the payload alone).

    Stochastic decoders draw fresh noise per image as the official codes do, yet reproducibly:
    the encoder derives the seed from what the stream decodes to and writes it into the side
    information, so a decoder reads it and never hashes anything. One host copy per call.
    """
    data = latent.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "little")


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the bottom/right of an NCHW tensor to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class CodecModule(L.LightningModule, ABC):
    """Lightning base of every learned codec in this repository."""

    #: method name written into every bitstream (modules.entropy.METHOD_IDS)
    method: ClassVar[str]
    #: images are padded to a multiple of this before coding and cropped back after decoding
    pad_multiple: ClassVar[int] = 64
    #: entropy-coded strings in every stream of the method (None: the method checks them)
    num_strings: ClassVar[int | None] = None
    #: bytes of side information in every stream (None: variable, the method checks it)
    side_bytes: ClassVar[int | None] = None

    def __init__(
        self,
        lr: float = 1e-4,
        aux_lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        clip_grad_norm: float | None = 1.0,
        lr_floor: float | None = None,
    ) -> None:
        """Optimizer settings, read back from `self.hparams`: subclasses take them in their own
        signature, pass them here and call `self.save_hyperparameters()` (a subclass without
        `lr_floor` in its signature has no floor)."""
        super().__init__()
        self._frozen: dict[str, nn.Module] = {}
        self._fingerprint: bytes | None = None
        self._phase: tuple[int, str] | None = None
        self.decoding: dict[str, Any] = {}
        self.encoding: dict[str, Any] = {}

    def save_hyperparameters(self, *args: Any, frame: types.FrameType | None = None, **kwargs):
        """Lightning's `save_hyperparameters`, then every value checked against the type hints
        of the subclass's `__init__` (`model.lmbda=abc` is a ConfigError at construction)."""
        super().save_hyperparameters(*args, frame=frame or inspect.currentframe().f_back, **kwargs)
        check_hyperparameters(type(self), self.hparams)

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training / estimation pass on a padded batch in [0, 1]."""

    @abstractmethod
    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        """Loss terms of the method; must contain "loss" and "bpp"."""

    @abstractmethod
    def compress_padded(self, x: Tensor) -> tuple[list[bytes], bytes]:
        """Code one padded image (1×3×H×W) -> (entropy-coded strings, side information)."""

    @abstractmethod
    def decompress_padded(
        self, strings: Sequence[bytes], side: bytes, size: tuple[int, int]
    ) -> Tensor:
        """Inverse of `compress_padded` for a padded image of `size` (H, W)."""

    def training_phases(self) -> list[tuple[int, str]]:
        """(first step, description) of each phase of the recipe, in order; the base class logs
        one INFO line when a phase begins or a run resumes inside it. A phase that starts where
        the next one starts is empty and never logged. Single-phase recipes return []."""
        return []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        started = [phase for phase in self.training_phases() if phase[0] <= self.global_step]
        if started and started[-1] != self._phase:
            self._phase = start, description = started[-1]
            resumed = "" if start == self.global_step else f" (resumed at {self.global_step})"
            if rank_zero_only.rank == 0:
                log.info(f"{description} from step {start}{resumed}")

    def set_decoding(self, **options: Any) -> None:
        """Change decoder settings (e.g. CDC's steps, γ, seed); the others keep their value.

        The settings a method has are the keys of `self.decoding` (none by default); encoders
        write them into the stream, so a decoder always uses the encoder's.
        """
        self.decoding = self.checked_decoding(_updated("decoding", self, self.decoding, options))

    def checked_decoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate (and normalise) a full set of decoding options; raise ConfigError if bad."""
        return options

    def decoding_for(self, latent: Tensor) -> dict[str, Any]:
        """The decoding options for the image(s) whose decoded latent is `latent`: a "seed" of
        None (fresh noise per image) becomes `content_seed(latent)`, the seed the stream
        carries; a fixed seed stays."""
        options = dict(self.decoding)
        if "seed" in options and options["seed"] is None:
            options["seed"] = content_seed(latent)
        return options

    def set_encoding(self, **options: Any) -> None:
        """Change encoder settings (e.g. the foundation codec's λ); the others keep their value.

        The settings a method has are the keys of `self.encoding` (none by default); they
        steer `compress` only: whatever the decoder needs of them is written into the stream.
        """
        self.encoding = self.checked_encoding(_updated("encoding", self, self.encoding, options))

    def checked_encoding(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate (and normalise) a full set of encoding options; raise ConfigError if bad."""
        return options

    # ------------------------------------------------------------------ frozen networks
    def freeze(self, name: str, module: nn.Module) -> nn.Module:
        """Register `module` as a frozen network: no gradients, always eval, not checkpointed."""
        module.requires_grad_(False).eval()
        self._frozen[name] = module
        setattr(self, name, module)
        return module

    def train(self, mode: bool = True) -> CodecModule:
        super().train(mode)
        for module in self._frozen.values():
            module.eval()
        return self

    def _is_frozen_key(self, key: str) -> bool:
        return any(key.startswith(f"{name}.") for name in self._frozen)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop frozen weights; record the class so the checkpoint alone rebuilds the codec."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if self._is_frozen_key(k)]:
            del state[key]
        checkpoint["codec_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if "backbone" in self._frozen and "backbone" in self.hparams:  # built from its config:
            # record which backbone decoding needs, so that load_codec finds it elsewhere
            from modules.diffusion.sd_backbone import backbone_record

            checkpoint["backbone"] = backbone_record(self.hparams.backbone, self.backbone)

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign=False):
        """Load trainable weights and coder tables; frozen networks must be the only omission."""
        resize_entropy_buffers(self, state_dict)
        # not strict: frozen networks are absent by design; every other omission is checked here
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not self._is_frozen_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"checkpoint does not match {type(self).__name__}: "
                f"missing keys {missing[:10]}, unexpected keys {result.unexpected_keys[:10]}"
            )
        return result

    # ------------------------------------------------------------------ entropy coding
    def entropy_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of every CompressAI entropy model of the codec."""
        for name, module in self.named_modules():
            if isinstance(module, EntropyBottleneck | GaussianConditional):
                yield name, module

    def aux_loss(self) -> Tensor:
        """CompressAI's quantile loss summed over the entropy bottlenecks (0 if none)."""
        losses = [m.loss() for _, m in self.entropy_modules() if isinstance(m, EntropyBottleneck)]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.device)

    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the CDF tables of every entropy model, then fingerprint the codec.

        Call after training or loading and before `compress`/`decompress`. Returns True if any
        table was (re)built.
        """
        updated = False
        for _, module in self.entropy_modules():
            if isinstance(module, EntropyBottleneck):
                updated |= module.update(force=force, update_quantiles=update_quantiles)
            else:
                table = module.scale_table if module.scale_table.numel() else get_scale_table()
                updated |= module.update_scale_table(table, force=force)
        self._fingerprint = fingerprint(self.coding_state(), extra=self.method)
        return updated

    def coding_state(self) -> Iterator[tuple[str, Tensor]]:
        """Tensors that decide the decoded output: everything except frozen networks, plus the
        `identity()` digest of each frozen network that has one (the diffusion backbone), so
        that a stream decoded against other frozen weights is refused."""
        for key, value in self.state_dict().items():
            if not self._is_frozen_key(key):
                yield key, value
        for name, module in self._frozen.items():
            if callable(getattr(module, "identity", None)):
                digest = bytearray(module.identity())
                yield f"{name}.identity", torch.frombuffer(digest, dtype=torch.uint8)

    @property
    def model_fingerprint(self) -> bytes:
        """4-byte fingerprint written into and checked against every bitstream."""
        if self._fingerprint is None:
            raise RuntimeError(
                f"{type(self).__name__}: call update() after training or loading, before coding"
            )
        return self._fingerprint

    @contextmanager
    def _coding_mode(self) -> Iterator[None]:
        """Eval mode, no autograd, deterministic cuDNN kernels (encoder and decoder must compute
        bit-identical entropy parameters); everything restored afterwards."""
        was_training = self.training
        cudnn = torch.backends.cudnn
        flags = cudnn.deterministic, cudnn.benchmark
        self.eval()
        cudnn.deterministic, cudnn.benchmark = True, False
        try:
            with torch.no_grad():
                yield
        finally:
            cudnn.deterministic, cudnn.benchmark = flags
            self.train(was_training)

    def compress(self, x: Tensor) -> bytes:
        """Encode one image (1×3×H×W or 3×H×W, float in [0, 1], any size) into bytes."""
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"compress expects one RGB image 1×3×H×W, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(
                f"compress expects a float image in [0, 1], got {x.dtype} (divide 8-bit images "
                "by 255)"
            )
        low, high = (float(v) for v in torch.aminmax(x.detach()))
        if not (low >= 0 and high <= 1):  # also NaN
            hint = " (an 8-bit image? divide it by 255)" if high > 1.5 else ""
            raise ValueError(f"compress expects values in [0, 1], got [{low:g}, {high:g}]{hint}")
        height, width = x.shape[-2:]
        with self._coding_mode():
            padded = pad_to_multiple(x.to(self.device, torch.float32), self.pad_multiple)
            strings, side = self.compress_padded(padded)
        stream = Bitstream(
            method=self.method,
            fingerprint=self.model_fingerprint,
            height=height,
            width=width,
            strings=tuple(strings),
            side=side,
        )
        return stream.to_bytes()

    def decompress(self, data: bytes) -> Tensor:
        """Decode bytes written by `compress` of this model -> 1×3×H×W image in [0, 1].

        Raises modules.entropy.BitstreamError for a truncated, corrupted, foreign or
        other-model stream, one whose strings or side information do not fit the method, or one
        that claims more than `modules.entropy.bitstream.MAX_IMAGE_PIXELS` pixels.
        """
        stream = Bitstream.from_bytes(
            data,
            method=self.method,
            fingerprint=self.model_fingerprint,
            num_strings=self.num_strings,
        )
        if self.side_bytes is not None and len(stream.side) != self.side_bytes:
            raise BitstreamError(
                f"{self.method} side information must be {self.side_bytes} bytes, "
                f"got {len(stream.side)}"
            )
        size = (
            math.ceil(stream.height / self.pad_multiple) * self.pad_multiple,
            math.ceil(stream.width / self.pad_multiple) * self.pad_multiple,
        )
        with self._coding_mode():
            x_hat = self.decompress_padded(stream.strings, stream.side, size)
        # a crafted stream decodes to garbage, but still to an image in [0, 1]
        return x_hat[..., : stream.height, : stream.width].nan_to_num(0.0).clamp(0, 1)

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Eval-mode forward of one image of any size -> (reconstruction in [0, 1], estimated bpp).

        The reconstruction equals `decompress(compress(x))`; the bpp is estimated from the
        likelihoods and divided by the original (unpadded) number of pixels.
        """
        height, width = x.shape[-2:]
        with self._coding_mode():
            out = self(pad_to_multiple(x.to(self.device, torch.float32), self.pad_multiple))
        x_hat = out["x_hat"][..., :height, :width].clamp(0, 1)
        return x_hat, bits_per_pixel(out["likelihoods"], x.shape[0] * height * width)

    def likelihoods(self, x: Tensor) -> dict[str, Tensor]:
        """Eval-mode likelihoods of the latents of a padded batch; methods whose forward also
        decodes (diffusion) override this with the entropy model alone."""
        return self(x)["likelihoods"]

    def estimate_bpp(self, x: Tensor) -> Tensor:
        """Rate of one image of any size estimated from the likelihoods (original pixels)."""
        height, width = x.shape[-2:]
        with self._coding_mode():
            padded = pad_to_multiple(x.to(self.device, torch.float32), self.pad_multiple)
            likelihoods = self.likelihoods(padded)
        return bits_per_pixel(likelihoods, x.shape[0] * height * width)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        self._fingerprint = None  # weights change: coding needs a fresh update()
        out = self(batch)
        terms = self.rd_loss(out, batch)
        aux = self.aux_loss()
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
        self.log("train/aux_loss", aux.detach())
        if out.get("x_hat") is not None:  # methods may train without decoding an image
            # "x": the training target when a method transforms its input (e.g. crops it)
            self.log("train/psnr", psnr(out["x_hat"].detach(), out.get("x", batch)))
        return terms["loss"] + aux

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = pad_to_multiple(batch, self.pad_multiple)
        out = self(x)
        terms = self.rd_loss(out, x)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True, prog_bar=False)
        self.log("val/psnr", psnr(out["x_hat"], x), sync_dist=True, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """One Adam with two parameter groups: network (lr) and entropy quantiles (aux_lr).

        One optimizer keeps Lightning's step count, schedules and checkpoints exact (several
        optimizers under manual optimisation count every step); the groups are disjoint and
        gradient-equivalent to CompressAI's two-optimizer loop.
        """
        hp = self.hparams
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        main = [p for n, p in named if not n.endswith(".quantiles")]
        aux = [p for n, p in named if n.endswith(".quantiles")]
        assert len(main) + len(aux) == len(named) and not {id(p) for p in main} & {
            id(p) for p in aux
        }
        groups = [{"params": main, "lr": hp.lr, "weight_decay": hp.weight_decay, "name": "main"}]
        if aux:
            groups.append({"params": aux, "lr": hp.aux_lr, "weight_decay": 0.0, "name": "aux"})
        optimizer = torch.optim.Adam(groups)
        factors = [lambda step: self.lr_factor(step)] + [lambda step: 1.0] * (len(groups) - 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    def lr_factor(self, step: int) -> float:
        """Factor of the main group's lr at optimizer step `step`: `lr_gamma` per milestone
        reached, never below `lr_floor`/`lr` (an absolute floor of the lr; None: none)."""
        hp = self.hparams
        factor = hp.lr_gamma ** sum(step >= milestone for milestone in hp.lr_milestones)
        floor = hp.get("lr_floor")
        return max(factor, floor / hp.lr) if floor else factor

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
    ) -> None:
        """Clip the gradient norm of the main group only; the quantiles are left alone."""
        if self.hparams.clip_grad_norm:
            main = optimizer.param_groups[0]["params"]
            torch.nn.utils.clip_grad_norm_(main, self.hparams.clip_grad_norm)


def _updated(
    kind: str, codec: CodecModule, current: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    """`current` updated with `options`; a name the codec does not have is a ConfigError."""
    unknown = sorted(set(options) - set(current))
    if unknown:
        raise ConfigError(
            f"{type(codec).__name__} has {kind} options {sorted(current)}, not {unknown}"
        )
    return {**current, **options}


def check_hyperparameters(cls: type, hparams: Mapping[str, Any]) -> None:
    """Raise ConfigError for a hyper-parameter whose value does not fit the type hint of its
    `cls.__init__` argument (numbers, strings, booleans, sequences and mappings of them)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except NameError:  # a hint only importable for type checkers: nothing to check against
        return
    for name, value in hparams.items():
        if name in hints and not _fits_hint(value, hints[name]):
            raise ConfigError(
                f"model.{name} must be {_describe_hint(hints[name])}, got {value!r} "
                f"({type(value).__name__})"
            )


def _fits_hint(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits_hint(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (Sequence, list, tuple) or hint in (Sequence, list, tuple):
        items = args[:1] if origin is not tuple or args[-1:] == (Ellipsis,) else ()
        return (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and all(_fits_hint(v, items[0]) for v in value if items)
        )
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return True  # a type this check does not know: the class validates it


def _describe_hint(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(
            "null" if a is type(None) else _describe_hint(a) for a in typing.get_args(hint)
        )
    origin = typing.get_origin(hint) or hint
    if origin in (Sequence, list, tuple):
        items = typing.get_args(hint)
        return (
            f"a list of {_describe_hint(items[0]).removeprefix('an ').removeprefix('a ')}s"
            if items
            else "a list"
        )
    if origin in (dict, Mapping):
        return "a mapping"
    return str(hint)


def codec_checkpoint(codec: CodecModule) -> dict[str, Any]:
    """The checkpoint `load_codec` reads, for a codec with built coder tables: its weights and
    tables (frozen networks left out), hyper-parameters, codec class and backbone record."""
    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in codec.state_dict().items()},
        "hyper_parameters": dict(codec.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    codec.on_save_checkpoint(checkpoint)  # drops frozen weights, records class and backbone
    return checkpoint


def load_codec(
    ckpt_path: str | Path,
    map_location: str | torch.device = "cpu",
    backbone_path: str | Path | None = None,
    weights_dir: str | Path | None = None,
) -> CodecModule:
    """Rebuild a codec from a checkpoint of this repository (training or exported), in eval
    mode with fresh CDF tables.

    A method with a frozen backbone (the `backbone` hyper-parameter) gets it from
    `backbone_path`, else from the path it was trained with, else from `weights_dir` under the
    folder name the checkpoint records; a backbone other than the recorded one is refused.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict) or "codec_class" not in checkpoint:
        raise ConfigError(f"{path} is not a codec checkpoint of this repository (no codec_class)")
    module_name, _, class_name = checkpoint["codec_class"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{path} was written by {checkpoint['codec_class']}, which this code does not have"
        ) from exc
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    record = checkpoint.get("backbone")
    if "backbone" in hparams:
        from modules.diffusion.sd_backbone import locate_backbone

        hparams["backbone"] = locate_backbone(
            hparams["backbone"], record, backbone_path, weights_dir
        )
    codec = cls(**hparams)
    codec.on_load_checkpoint(checkpoint)
    codec.load_state_dict(checkpoint["state_dict"])
    if record is not None and codec.backbone.identity().hex() != record["identity"]:
        raise ConfigError(
            f"the backbone at {hparams['backbone'].get('path')} is not the one {path} was "
            f"trained with (identity {codec.backbone.identity().hex()}, the checkpoint's "
            f"{record['identity']}: {record.get('hub_id') or record.get('name')})"
        )
    codec = codec.to(map_location).eval()
    codec.update(force=True)
    return codec

"""Frozen Stable Diffusion 2.1-base (UNet, VAE, empty-prompt embedding) loaded with diffusers.

`load_backbone("sd21_base", path=...)` reads a local diffusers-format folder (or a hub id on an
online machine) and never falls back to random weights. `load_backbone("tiny_sd")` builds the
same classes at tiny size with seeded random weights, saves them in that layout and loads them
through the same code, for tests and smoke runs on CPU.

Checkpoints record which backbone they need (`backbone_record`: name, hub id, folder name,
identity); `locate_backbone` finds it again on another machine or in another working directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import is_accelerate_available
from huggingface_hub import is_offline_mode
from tokenizers.pre_tokenizers import ByteLevel
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from modules.entropy import fingerprint
from modules.metrics.lpips import WeightsNotFoundError

from .schedules import linear_alphas_cumprod

BACKBONES = ("sd21_base", "tiny_sd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HUB_ID = "stabilityai/stable-diffusion-2-1-base"
#: subfolders of a diffusers-format Stable Diffusion folder that the backbone reads
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: SD 2.1-base's scheduler_config.json (its diffusers folder ships a PNDMScheduler config)
SD21_BASE_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
#: text-encoder tensors folded into the backbone identity (transformers < 5 prefixes "text_model.")
_TEXT_IDENTITY_KEYS = (
    "final_layer_norm.weight",
    "final_layer_norm.bias",
    "embeddings.position_embedding.weight",
)


class StableDiffusionBackbone(nn.Module):
    """Frozen SD UNet and VAE (always in eval mode) with the ᾱ table and the empty-prompt
    embedding of the same folder; build it with `load_backbone`."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        alphas_cumprod: Tensor,
        prompt_embedding: Tensor,
        text_encoder_digest: bytes,
    ) -> None:
        super().__init__()
        self.unet = unet.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.latent_scale = float(vae.config.scaling_factor)
        self.feature_channels = int(vae.config.block_out_channels[-1])
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)
        self.register_buffer("prompt_embedding", prompt_embedding, persistent=False)
        # Weights are hashed at bfloat16 precision so the storage dtype does not change the
        # identity; the prompt embedding is an activation (its last bits depend on the CPU
        # kernels), so the text encoder enters through a digest of its weights instead.
        weights = {
            "unet.conv_in.weight": unet.conv_in.weight,
            "unet.conv_out.weight": unet.conv_out.weight,
            "vae.decoder.conv_out.weight": vae.decoder.conv_out.weight,
        }
        self._identity = fingerprint(
            [(name, w.detach().to(torch.bfloat16)) for name, w in weights.items()]
            + [("alphas_cumprod", self.alphas_cumprod)],
            extra=f"{self.latent_scale!r}:{text_encoder_digest.hex()}",
        )

    def train(self, mode: bool = True) -> StableDiffusionBackbone:
        """Stay in eval mode whatever the parent module asks: the backbone is frozen."""
        return super().train(False)

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Image in [-1, 1] -> (feature, z0), both in x's dtype.

        `feature` is the VAE encoder's activation before `conv_out` (SiLU(GroupNorm(mid
        block))), `feature_channels` × H/8 × W/8, times `latent_scale`; `z0` is `latent_scale`
        times a sample (drawn with `generator`) of the posterior computed from that same
        activation, 4 × H/8 × W/8.
        """
        activation, posterior = self._encode(x)
        z0 = posterior.sample(generator)
        return self.latent_scale * activation.to(x.dtype), self.latent_scale * z0.to(x.dtype)

    def latent(self, x: Tensor) -> Tensor:
        """Image in [-1, 1] -> `latent_scale` times the mean of the VAE posterior (4 × H/8 ×
        W/8, in x's dtype): the deterministic latent a codec transmits."""
        return self.latent_scale * self._encode(x)[1].mean.to(x.dtype)

    def _encode(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution]:
        encoder = self.vae.encoder
        # diffusers' Encoder.forward, unrolled to expose the activation before conv_out
        h = encoder.conv_in(x.to(self.vae.dtype))
        for block in encoder.down_blocks:
            h = block(h)
        activation = encoder.conv_act(encoder.conv_norm_out(encoder.mid_block(h)))
        moments = encoder.conv_out(activation)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        return activation, DiagonalGaussianDistribution(moments)

    def noise_prediction(self, z_t: Tensor, t: Tensor) -> Tensor:
        """The UNet's ε̂ for the empty prompt at (possibly fractional) timesteps `t` (B,)."""
        context = self.prompt_embedding.expand(z_t.shape[0], -1, -1)
        return self.unet(z_t, t, encoder_hidden_states=context).sample

    def autocast(self, enabled: bool = True) -> AbstractContextManager:
        """bf16 autocast for the frozen networks on GPU when `enabled`; a no-op on CPU."""
        device = self.unet.conv_in.weight.device
        if enabled and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latent -> image in about [-1, 1] (not clamped), differentiable, in z's dtype."""
        return self.vae.decode((z / self.latent_scale).to(self.vae.dtype)).sample.to(z.dtype)

    def identity(self) -> bytes:
        """4-byte digest of the backbone (UNet conv_in/conv_out, VAE decoder conv_out, ᾱ,
        latent scale, text encoder), so a stream decoded against another backbone is refused."""
        return self._identity


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> Tensor:
    """ᾱ_t, t = 0 … N−1, in float64 from a diffusers scheduler config ("scaled_linear",
    "linear" or `trained_betas`)."""
    # diffusers builds β in float32; RDEIC's relay constants are pinned in float64.
    n = int(config["num_train_timesteps"])
    if config.get("trained_betas") is not None:
        return torch.cumprod(1 - torch.tensor(config["trained_betas"], dtype=torch.float64), 0)
    schedule = config["beta_schedule"]
    if schedule == "linear":
        return linear_alphas_cumprod(n, config["beta_start"], config["beta_end"])
    if schedule == "scaled_linear":
        # β_t = (√β_start + t·(√β_end − √β_start)/(N − 1))², t = 0 … N − 1
        sqrt_betas = torch.linspace(
            config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n, dtype=torch.float64
        )
        return torch.cumprod(1 - sqrt_betas**2, dim=0)
    raise ValueError(f"unsupported beta_schedule {schedule!r}; SD 2.1-base uses 'scaled_linear'")


def load_backbone(
    name: str = "sd21_base",
    path: str | os.PathLike | None = None,
    hub_id: str | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> StableDiffusionBackbone:
    """Load the frozen SD 2.1-base backbone, or build and load the tiny one.

    "sd21_base" reads the diffusers folder `path` (unet/, vae/, text_encoder/, tokenizer/,
    scheduler/) or, when `path` is None, `hub_id` through the Hugging Face cache/hub.
    "tiny_sd" saves a seeded random SD-shaped model into `path` (a temporary folder when None)
    and loads it through the same code. `dtype` ("float32", "bfloat16") is the storage dtype
    of the UNet and VAE.
    """
    if dtype not in DTYPES:
        raise ValueError(f"backbone dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if name == "tiny_sd":
        if path is None:
            with tempfile.TemporaryDirectory(prefix="tiny_sd_") as folder:
                return _load_folder(save_tiny_sd(folder, seed), dtype)
        return _load_folder(save_tiny_sd(path, seed), dtype)
    if name != "sd21_base":
        raise ValueError(f"backbone name must be one of {', '.join(BACKBONES)}, got {name!r}")
    if path is not None:
        return _load_folder(Path(path), dtype)
    if hub_id is None:
        raise ValueError("backbone sd21_base needs a local folder (path) or a hub id (hub_id)")
    return _load_hub(hub_id, dtype)


def backbone_record(config: Mapping[str, Any] | None, backbone: StableDiffusionBackbone) -> dict:
    """What a checkpoint records about its frozen backbone: the config's name, the hub id of the
    weights, the folder name it was read from and the backbone's identity (hex)."""
    config = dict(config or {})
    path = config.get("path")
    hub_id = config.get("hub_id") or (
        HUB_ID if config.get("name", "sd21_base") == "sd21_base" else None
    )
    return {
        "name": config.get("name", "sd21_base"),
        "hub_id": hub_id,
        "folder": Path(path).name if path else None,
        "identity": backbone.identity().hex(),
    }


def locate_backbone(
    config: Mapping[str, Any] | None,
    record: Mapping[str, Any] | None = None,
    path: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The backbone config that rebuilds a checkpoint's codec here: `path` if given, else the
    config's path if that folder exists, else `<weights_dir>/<recorded folder name>`.

    The tiny backbone is rebuilt from its seed and needs no folder. Raises WeightsNotFoundError
    naming every place looked at and the setting that fixes it.
    """
    config = dict(config or {})
    if config.get("name", "sd21_base") != "sd21_base":
        return config
    if path is not None:
        return {**config, "path": str(path)}
    recorded = config.get("path")
    if recorded is None:  # a hub id: loaded from the Hugging Face cache or hub
        return config
    if Path(recorded).is_dir():
        return config
    folder = (record or {}).get("folder") or Path(recorded).name
    tried = [str(recorded)]
    if weights_dir is not None:
        candidate = Path(weights_dir) / folder
        if candidate.is_dir():
            return {**config, "path": str(candidate)}
        tried.append(str(candidate))
    hub_id = (record or {}).get("hub_id") or HUB_ID
    raise WeightsNotFoundError(
        f"the checkpoint needs the backbone {hub_id}, found neither at {' nor '.join(tried)}; "
        "set backbone.path=<folder> (scripts/codec.py: --backbone-path) or paths.weights_dir="
        f"<folder holding {folder}/>; {_how_to_get(str(Path(weights_dir or 'weights') / folder))}"
    )


#: network sizes of the random SD-shaped models: "tiny" for tests, "sd21" (SD 2.1-base's real
#: architecture) for benchmarks that need its cost but not its weights
RANDOM_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "projection_dim": 32},
        "unet": {"sample_size": 8, "block_out_channels": (32, 64, 64, 64),
                 "attention_head_dim": (2, 4, 4, 4), "cross_attention_dim": 32},
        "vae": {"block_out_channels": (8, 16, 32, 32), "norm_num_groups": 8, "sample_size": 64},
    },
    "sd21": {
        "text": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                 "num_attention_heads": 16, "projection_dim": 512},
        "unet": {"sample_size": 64, "block_out_channels": (320, 640, 1280, 1280),
                 "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024},
        "vae": {"block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32,
                "sample_size": 512},
    },
}  # fmt: skip


def save_tiny_sd(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny SD 2.1-shaped model with random weights seeded by `seed` into `path`, in
    the diffusers folder layout of SD 2.1-base, and return the folder."""
    return save_random_sd(path, seed, "tiny")


def save_random_sd(path: str | os.PathLike, seed: int = 0, size: str = "tiny") -> Path:
    """Write an SD 2.1-shaped model of `size` (RANDOM_SIZES) with random weights seeded by
    `seed` into `path`, in SD 2.1-base's diffusers folder layout, and return the folder."""
    sizes = RANDOM_SIZES[size]
    folder = Path(path)
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE with no merges: the 256 byte symbols, their end-of-word forms and
    # CLIP's two special tokens; "!" is the pad token as in SD 2.1's tokenizer.
    symbols = sorted(ByteLevel.alphabet())
    vocab = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    (tokenizer_dir / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, pad_token="!", model_max_length=77)
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                max_position_embeddings=77,
                hidden_act="gelu",
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sizes["text"],
            )
        )
        unet = UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=2,
            use_linear_projection=True,
            **sizes["unet"],
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            scaling_factor=0.18215,
            **sizes["vae"],
        )
        tokenizer.save_pretrained(tokenizer_dir)
        text_encoder.save_pretrained(folder / "text_encoder")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    PNDMScheduler.from_config(SD21_BASE_SCHEDULER).save_pretrained(folder / "scheduler")
    return folder


def _how_to_get(path: str) -> str:
    layout = ", ".join(f"{s}/" for s in SUBFOLDERS)
    patterns = " ".join(f"'{s}/*'" for s in SUBFOLDERS)
    return (
        f"expected a diffusers-format Stable Diffusion 2.1-base folder with {layout}. Get it on "
        f"a machine with internet access with `hf download {HUB_ID} --include {patterns} "
        f"--local-dir {path}`, copy it here and set backbone.path={path}"
    )


def _load_folder(folder: Path, dtype: str) -> StableDiffusionBackbone:
    if not folder.is_dir():
        raise WeightsNotFoundError(f"no backbone folder {folder}; {_how_to_get(str(folder))}")
    missing = [f"{folder / s}/" for s in SUBFOLDERS if not (folder / s).is_dir()]
    if missing:
        raise WeightsNotFoundError(
            f"backbone folder {folder} lacks {', '.join(missing)}; {_how_to_get(str(folder))}"
        )

    def load(loader: Callable[..., Any], subfolder: str, **kwargs: Any) -> Any:
        try:
            return loader(str(folder), subfolder=subfolder, **kwargs)
        except OSError as err:
            raise WeightsNotFoundError(
                f"cannot load {folder / subfolder}: {err}; {_how_to_get(str(folder))}"
            ) from err

    return _load(load, str(folder), dtype)


def _load_hub(hub_id: str, dtype: str) -> StableDiffusionBackbone:
    def load(loader: Callable[..., Any], subfolder: str, **kwargs: Any) -> Any:
        try:
            return loader(hub_id, subfolder=subfolder, **kwargs)
        except OSError as err:
            reason = (
                "HF_HUB_OFFLINE=1 and it is not in the local cache" if is_offline_mode() else err
            )
            raise WeightsNotFoundError(
                f"cannot load {hub_id}/{subfolder} from the Hugging Face hub ({reason}); "
                f"{_how_to_get('<path>')}"
            ) from err

    return _load(load, hub_id, dtype)


def _load(load: Callable[..., Any], source: str, dtype: str) -> StableDiffusionBackbone:
    """Load every part through `load(loader, subfolder, **kwargs)`; refuse incomplete weights."""
    config = load(DDPMScheduler.load_config, "scheduler")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"{source}: the scheduler's prediction_type is {config['prediction_type']!r}; "
            f"RDEIC needs the ε-prediction SD 2.1-base ({HUB_ID}), not the 768-v model"
        )
    alphas_cumprod = alphas_cumprod_from_config(config)

    def load_complete(loader: Callable[..., Any], subfolder: str, **kwargs: Any) -> nn.Module:
        # diffusers and transformers only warn and initialise missing weights at random
        model, info = load(loader, subfolder, output_loading_info=True, **kwargs)
        missing = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
        if missing:
            shown = ", ".join(str(key) for key in missing[:5])
            raise RuntimeError(
                f"{source}/{subfolder}: the checkpoint lacks {len(missing)} weight(s) of "
                f"{type(model).__name__} ({shown}{', …' if len(missing) > 5 else ''}); "
                "the folder is incomplete or not SD 2.1-base"
            )
        return model

    with _quiet_transformers():
        tokenizer = load(CLIPTokenizer.from_pretrained, "tokenizer")
        text_encoder = load_complete(
            CLIPTextModel.from_pretrained, "text_encoder", dtype=torch.float32
        )
    # SD 2.x conditions on the last hidden state (final layer norm applied) of the empty
    # prompt padded to 77 tokens, without an attention mask, as diffusers' pipelines do.
    ids = tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        prompt_embedding = text_encoder(ids)[0].float()
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    text_encoder_digest = fingerprint((key, state[key]) for key in _TEXT_IDENTITY_KEYS)
    del text_encoder, state

    # Without accelerate, diffusers warns and loads with low_cpu_mem_usage=False anyway.
    kwargs = {"torch_dtype": DTYPES[dtype], "low_cpu_mem_usage": is_accelerate_available()}
    unet = load_complete(UNet2DConditionModel.from_pretrained, "unet", **kwargs)
    vae = load_complete(AutoencoderKL.from_pretrained, "vae", **kwargs)
    return StableDiffusionBackbone(
        unet, vae, alphas_cumprod, prompt_embedding, text_encoder_digest
    )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file progress bars (restored afterwards)."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()

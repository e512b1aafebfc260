"""Tests for loading the frozen SD 2.1 backbone (tiny random weights through the real loader)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from modules.diffusion import StableDiffusionBackbone, load_backbone, save_tiny_sd
from modules.metrics.lpips import WeightsNotFoundError


@pytest.fixture(scope="module")
def backbone() -> StableDiffusionBackbone:
    return load_backbone("tiny_sd", seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "sd", seed=0)


def copy_folder(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "sd"))


def test_tiny_is_seeded_and_identified(backbone):
    again = load_backbone("tiny_sd", seed=0)
    state, state_again = backbone.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert torch.equal(backbone.prompt_embedding, again.prompt_embedding)
    assert backbone.identity() == again.identity()
    assert isinstance(backbone.identity(), bytes) and len(backbone.identity()) == 4

    other = load_backbone("tiny_sd", seed=1)
    assert not torch.equal(state["unet.conv_in.weight"], other.state_dict()["unet.conv_in.weight"])
    assert backbone.identity() != other.identity()


def test_tiny_has_sd21_structure(backbone):
    unet, vae = backbone.unet.config, backbone.vae.config
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(unet.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet.layers_per_block == 2 and unet.use_linear_projection
    assert unet.in_channels == unet.out_channels == 4
    assert unet.cross_attention_dim == backbone.prompt_embedding.shape[-1]
    assert vae.latent_channels == 4 and len(vae.block_out_channels) == 4
    assert backbone.latent_scale == 0.18215 == vae.scaling_factor
    assert backbone.feature_channels == vae.block_out_channels[-1] == 32


def test_frozen_and_always_eval(backbone):
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not any(m.training for m in backbone.modules())
    parent = torch.nn.Module()
    parent.backbone = backbone
    parent.train()
    assert parent.training and not backbone.unet.training and not backbone.vae.training


def test_buffers_and_prompt_embedding(backbone, tiny_folder):
    # the text encoder is used once at load and not kept
    assert {name for name, _ in backbone.named_children()} == {"unet", "vae"}
    assert not any(isinstance(m, CLIPTextModel) for m in backbone.modules())
    # ᾱ and the embedding are buffers that checkpoints do not store
    assert not any(
        k.startswith(("alphas_cumprod", "prompt_embedding")) for k in backbone.state_dict()
    )
    alphas = backbone.alphas_cumprod
    assert alphas.dtype == torch.float64 and alphas.shape == (1000,)
    assert alphas[299].item() == pytest.approx(0.592183, abs=1e-6)
    scheduler = DDPMScheduler.from_pretrained(tiny_folder, subfolder="scheduler")
    torch.testing.assert_close(alphas.float(), scheduler.alphas_cumprod, atol=1e-6, rtol=0)
    # the empty prompt through the folder's own tokenizer and text encoder
    tokenizer = CLIPTokenizer.from_pretrained(tiny_folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_folder, subfolder="text_encoder")
    ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, :2].tolist() == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert set(ids[0, 2:].tolist()) == {tokenizer.convert_tokens_to_ids("!")}
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
    assert backbone.prompt_embedding.shape == (1, 77, text_encoder.config.hidden_size)
    torch.testing.assert_close(backbone.prompt_embedding, expected)


def test_encode_decode(backbone):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feature, z0 = backbone.encode(x, torch.Generator().manual_seed(1))
    assert feature.shape == (2, backbone.feature_channels, 8, 8)
    assert z0.shape == (2, 4, 8, 8)

    # independently: diffusers' own encode, with the input of conv_out captured by a hook
    captured = []
    hook = backbone.vae.encoder.conv_out.register_forward_pre_hook(
        lambda module, args: captured.append(args[0])
    )
    try:
        with torch.no_grad():
            posterior = backbone.vae.encode(x).latent_dist
    finally:
        hook.remove()
    torch.testing.assert_close(feature, backbone.latent_scale * captured[0])
    torch.testing.assert_close(
        z0, backbone.latent_scale * posterior.sample(torch.Generator().manual_seed(1))
    )
    assert not torch.equal(z0, backbone.latent_scale * posterior.mode())

    z = z0.clone().requires_grad_(True)
    image = backbone.decode(z)
    assert image.shape == (2, 3, 64, 64)
    with torch.no_grad():
        expected = backbone.vae.decode(z0 / backbone.latent_scale).sample
    torch.testing.assert_close(image, expected)
    image.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_bfloat16_storage(backbone):
    half = load_backbone("tiny_sd", seed=0, dtype="bfloat16")
    assert half.unet.dtype == half.vae.dtype == torch.bfloat16
    assert half.alphas_cumprod.dtype == torch.float64
    # same weights: the identity does not depend on the storage dtype
    assert half.identity() == backbone.identity()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    feature, z0 = half.encode(x)
    assert feature.dtype == z0.dtype == half.decode(z0).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        load_backbone("tiny_sd", dtype="float16")


def test_tiny_folder_loads_as_sd21_base(backbone, tiny_folder):
    layout = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert layout <= {p.name for p in tiny_folder.iterdir()}
    config = json.loads((tiny_folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "scaled_linear" and config["prediction_type"] == "epsilon"
    assert (config["beta_start"], config["beta_end"], config["steps_offset"]) == (
        0.00085,
        0.012,
        1,
    )
    loaded = load_backbone("sd21_base", path=tiny_folder)
    assert loaded.identity() == backbone.identity()
    assert torch.equal(loaded.unet.conv_in.weight, backbone.unet.conv_in.weight)


def test_missing_folder_names_the_layout(tmp_path, tiny_folder):
    missing = tmp_path / "stable-diffusion-2-1-base"
    with pytest.raises(FileNotFoundError) as info:
        load_backbone("sd21_base", path=missing)
    assert isinstance(info.value, WeightsNotFoundError)
    message = str(info.value)
    assert str(missing) in message and "backbone.path=" in message and "hf download" in message
    for sub in ("unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/"):
        assert sub in message

    folder = copy_folder(tiny_folder, tmp_path)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(FileNotFoundError, match=r"lacks .*tokenizer/"):
        load_backbone("sd21_base", path=folder)


def test_missing_or_incomplete_weights_are_refused(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder, tmp_path)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["decoder.conv_out.weight"]
    save_file(state, weights)
    with pytest.raises(RuntimeError, match=r"decoder\.conv_out\.weight"):
        load_backbone("sd21_base", path=folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="vae"):
        load_backbone("sd21_base", path=folder)


def test_v_prediction_is_refused(tmp_path, tiny_folder):
    folder = copy_folder(tiny_folder, tmp_path)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    with pytest.raises(ValueError, match=r"ε-prediction SD 2\.1-base"):
        load_backbone("sd21_base", path=folder)


# diffusers passes a deprecated argument to huggingface_hub before finding nothing cached
@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument:UserWarning")
def test_hub_id_offline_and_bad_arguments():
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1"):
        load_backbone("sd21_base", hub_id="example-org/not-in-the-cache")
    with pytest.raises(ValueError, match="path"):
        load_backbone("sd21_base")
    with pytest.raises(ValueError, match="tiny_sd"):
        load_backbone("sd15")

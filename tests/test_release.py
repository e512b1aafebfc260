"""Checkpoints that leave the training machine: the export script (deployable, hashed name) and
the backbone a checkpoint records, found again elsewhere or refused when it is another one."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from modules.base import codec_checkpoint, load_codec
from modules.diffusion.sd_backbone import HUB_ID, save_tiny_sd
from modules.metrics import WeightsNotFoundError
from modules.rdeic import RDEICModule
from modules.utils import ConfigError
from tests.conftest import compose_config, load_script

#: the tiny RDEIC of the smoke config, on an SD-layout folder loaded as `sd21_base`
TINY_RDEIC = {
    "channels": 32,
    "groups": [4, 4, 8, 16],
    "num_codes": 64,
    "hint_channels": 16,
    "lpips_pretrained_backbone": False,
}


def test_export_keeps_what_decoding_needs_and_nothing_else(trained_elic, tmp_path, capsys):
    export = load_script("export")
    assert export.main([str(trained_elic), f"--out={tmp_path}", "--name=elic_tiny"]) == 0
    (path,) = tmp_path.glob("elic_tiny-*.ckpt")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == f"elic_tiny-{digest[:8]}.ckpt" and digest in capsys.readouterr().out
    exported = torch.load(path, weights_only=False)
    assert set(exported) == {
        "state_dict",
        "hyper_parameters",
        "codec_class",
        "pytorch-lightning_version",
    }
    original = torch.load(trained_elic, weights_only=False)
    assert {"optimizer_states", "loops", "lr_schedulers"} <= set(original)
    assert exported["hyper_parameters"] == dict(original["hyper_parameters"])
    tables = [k for k in exported["state_dict"] if k.endswith("_quantized_cdf")]
    assert tables and all(exported["state_dict"][k].numel() for k in tables)  # CDFs built
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    released, trained = load_codec(path), load_codec(trained_elic)
    data = released.compress(x)
    assert data == trained.compress(x) and torch.equal(
        released.decompress(data), trained.decompress(data)
    )


@pytest.fixture(scope="module")
def moved_rdeic(tmp_path_factory) -> tuple[Path, Path, RDEICModule]:
    """An RDEIC checkpoint trained against <root>/train/stable-diffusion-2-1-base, whose backbone
    then moved to <root>/weights/; returns (checkpoint, new weights folder, the codec)."""
    root = tmp_path_factory.mktemp("moved")
    folder = save_tiny_sd(root / "train" / "stable-diffusion-2-1-base", seed=0)
    torch.manual_seed(0)
    codec = RDEICModule(backbone={"name": "sd21_base", "path": str(folder)}, **TINY_RDEIC)
    codec.eval().update(force=True)
    ckpt = root / "rdeic.ckpt"
    torch.save(codec_checkpoint(codec), ckpt)
    (root / "weights").mkdir()
    shutil.move(folder, root / "weights" / folder.name)
    return ckpt, root / "weights", codec


def test_checkpoint_records_the_backbone_it_needs(moved_rdeic):
    ckpt, _, codec = moved_rdeic
    record = torch.load(ckpt, weights_only=False)["backbone"]
    assert record == {
        "name": "sd21_base",
        "hub_id": HUB_ID,
        "folder": "stable-diffusion-2-1-base",
        "identity": codec.backbone.identity().hex(),
    }
    assert not any(
        k.startswith("backbone.") for k in torch.load(ckpt, weights_only=False)["state_dict"]
    )


def test_moved_backbone_is_found_under_weights_dir_or_given_path(moved_rdeic):
    ckpt, weights, codec = moved_rdeic
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    data = codec.compress(x)
    for loaded in (
        load_codec(ckpt, weights_dir=weights),
        load_codec(ckpt, backbone_path=weights / "stable-diffusion-2-1-base"),
    ):
        assert loaded.model_fingerprint == codec.model_fingerprint
        assert torch.equal(loaded.decompress(data), codec.decompress(data))
    with pytest.raises(WeightsNotFoundError) as error:
        load_codec(ckpt, weights_dir=weights.parent / "elsewhere")
    message = str(error.value)
    assert f"needs the backbone {HUB_ID}" in message and "backbone.path=" in message
    assert "elsewhere/stable-diffusion-2-1-base" in message and "\n" not in message


def test_another_backbone_is_refused(moved_rdeic, tmp_path):
    ckpt, _, _ = moved_rdeic
    other = save_tiny_sd(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match=r"is not the one .* was trained with"):
        load_codec(ckpt, backbone_path=other)


def test_eval_takes_backbone_path(tmp_path):
    cfg = compose_config("eval", ["ckpt_path=x.ckpt", "backbone.path=/somewhere/sd21"])
    assert cfg.backbone.path == "/somewhere/sd21"

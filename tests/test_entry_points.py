"""Entry points as a user meets them: one-line errors with exit code 2 (bugs still raise), the
codec CLI's options, folder mode, timings and early checks, eval.py's help, the Makefile."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from modules.base import codec_checkpoint
from modules.entropy import Bitstream
from modules.utils import task_wrapper
from tests.conftest import CONFIGS, ROOT, compose_config, load_script

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _exits_2(task, cfg) -> None:
    with pytest.raises(SystemExit) as exit_info:
        task_wrapper(task)(cfg)
    assert exit_info.value.code == 2


def test_eval_without_ckpt_path_is_one_line(tmp_path, capsys):
    from eval import evaluate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", [f"paths.log_dir={tmp_path}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    # Hydra resolves the run folder before the task starts (it used to fail there, 179 lines)
    assert cfg.hydra.run.dir == f"{tmp_path}/eval/eval/results"
    _exits_2(evaluate, compose_config("eval", [], tmp_path / "run"))
    assert _one_error_line(capsys) == (
        "error: ckpt_path is required: python eval.py ckpt_path=<checkpoint, glob or list> "
        "data=<set> (see python eval.py --help)"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lmbda=abc"], "model.lmbda must be a number, got 'abc' (str)"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
        (["model.groups=[4,4,8,15.5]"], "model.groups must be a list of integers"),
    ],
)
def test_train_config_errors_are_one_line_before_training(tmp_path, capsys, overrides, message):
    from train import train

    cfg = compose_config(
        "train", ["experiment=elic_l0.032", "debug=smoke", *overrides], tmp_path / "run"
    )
    _exits_2(train, cfg)
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training step


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ckpt_path=README.md"], "README.md is not a readable checkpoint (UnpicklingError)"),
        (["device=foo"], "device must be auto, cpu, cuda or cuda:<index>, got 'foo'"),
        pytest.param(["device=cuda"], "CUDA is not available on this machine", marks=NO_CUDA),
        (["data=folder"], "data.test.root is required"),
    ],
)
def test_eval_errors_are_one_line(tmp_path, capsys, trained_elic, overrides, message):
    from eval import evaluate

    overrides = [f"ckpt_path={trained_elic}", "data=sample", "metrics=basic", *overrides]
    cfg = compose_config("eval", overrides, tmp_path / "run")
    _exits_2(evaluate, cfg)
    assert message in _one_error_line(capsys)


def test_internal_bugs_are_not_presented_as_user_errors(codec_cli, monkeypatch):
    def bug(cfg):
        raise ValueError("an internal bug")

    with pytest.raises(ValueError, match="internal bug"):
        task_wrapper(bug)(None)
    monkeypatch.setattr(codec_cli, "run", lambda args, options: bug(None))
    with pytest.raises(ValueError, match="internal bug"):
        codec_cli.main(["compress", "--ckpt=x", "--input=x", "--output=x"])


def test_eval_help_lists_only_eval_groups():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", return_hydra_config=True)
    GlobalHydra.instance().clear()
    template = cfg.hydra.help.template
    assert "data: clic2020, " in template and "folder, kodak" in template
    assert "metrics: basic, default" in template
    for group in ("experiment", "trainer", "callbacks", "model", "debug", "logger"):
        assert f"{group}:" not in template


# ---------------------------------------------------------------------------- codec CLI
@pytest.fixture(scope="module")
def codec_cli():
    return load_script("codec")


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, size in [("a", (45, 77)), ("sub/b", (70, 66))]:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{name}.png")
    return folder


def test_codec_cli_folder_mode_loads_the_model_once(codec_cli, trained_elic, photos, tmp_path):
    from modules.base import load_codec

    loads = []
    original = codec_cli.load_codec
    codec_cli.load_codec = lambda *a, **k: loads.append(a) or original(*a, **k)
    try:
        streams, decoded = tmp_path / "streams", tmp_path / "decoded"
        assert codec_cli.main(["compress", f"--ckpt={trained_elic}", f"--input={photos}",
                               f"--output={streams}"]) == 0  # fmt: skip
        assert codec_cli.main(["decompress", f"--ckpt={trained_elic}", f"--input={streams}",
                               f"--output={decoded}"]) == 0  # fmt: skip
    finally:
        codec_cli.load_codec = original
    assert len(loads) == 2  # once per command, not per file
    assert sorted(p.relative_to(streams).as_posix() for p in streams.rglob("*.bin")) == [
        "a.bin",
        "sub/b.bin",
    ]
    codec = load_codec(trained_elic)
    for name in ("a", "sub/b"):
        x = torch.from_numpy(np.asarray(Image.open(photos / f"{name}.png")))
        x = x.permute(2, 0, 1).float().div(255)[None]
        assert (streams / f"{name}.bin").read_bytes() == codec.compress(x)
        expected = (codec.reconstruct(x)[0][0] * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(decoded / f"{name}.png")), expected)


def test_codec_cli_reports_rates_and_timings(codec_cli, trained_elic, photos, tmp_path, capsys):
    args = ["compress", f"--ckpt={trained_elic}", f"--input={photos}", f"--output={tmp_path}/s"]
    assert codec_cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "ELICModule on cpu, loaded in" in lines[0]
    assert all(" bytes, " in line and " bpp, encode " in line for line in lines[1:3])
    assert lines[3].startswith("2 files, compress ") and " ± " in lines[3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decompress", "--input={bin}", "--output={tmp}/decoded"], "no lossless image extension"),
        (["compress", "--input={png}", "--output={tmp}/x.png"], "would hold a bitstream"),
        (["compress", "--input={tmp}/none.png", "--output={tmp}/x.bin"], "input not found"),
        (["compress", "--input={bad}", "--output={tmp}/x.bin"], "cannot read image"),
        (["decompress", "--input={bad}", "--output={tmp}/x.png"], "too short: 12 bytes"),
        (["decompress", "--input={png}", "--output={tmp}/x.png"], "bad magic"),
        (["decompress", "--input={bin}", "--output={tmp}/x.png", "--steps=2"], "no coding opt"),
        (["compress", "--input={png}", "--output={tmp}/x.bin", "--device=foo"], "device must"),
        pytest.param(
            ["compress", "--input={png}", "--output={tmp}/x.bin", "--device=cuda"],
            "CUDA is not available",
            marks=NO_CUDA,
        ),
    ],
)
def test_codec_cli_checks_inputs_before_loading_the_model(
    codec_cli, photos, tmp_path, capsys, monkeypatch, args, message
):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "a.bin").write_bytes(b"DIFC" + bytes(30))
    paths = {"tmp": tmp_path, "png": photos / "a.png", "bad": tmp_path / "bad.png"}
    paths["bin"] = tmp_path / "a.bin"

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(codec_cli, "load_codec", no_loading)
    argv = [a.format(**paths) for a in args] + ["--ckpt=unused.ckpt"]
    assert codec_cli.main(argv) == 2
    assert message in _one_error_line(capsys)


def test_codec_cli_decoding_options_travel_in_the_stream(codec_cli, tiny_codec, tmp_path):
    codec = tiny_codec("cdc")
    ckpt = tmp_path / "cdc.ckpt"
    torch.save(codec_checkpoint(codec), ckpt)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    argv = ["compress", f"--ckpt={ckpt}", f"--input={tmp_path}/in.png", "--steps", "2",
            f"--output={tmp_path}/in.bin", "--gamma=0.5", "--seed=7"]  # fmt: skip
    assert codec_cli.main(argv) == 0
    side = Bitstream.from_bytes((tmp_path / "in.bin").read_bytes()).side
    assert struct.unpack("<HeI", side) == (2, 0.5, 7)  # steps, γ, seed of CDC's stream
    assert codec_cli.main([*argv[:-2], "--stepz=2"]) == 2  # not an option of CDC


# ---------------------------------------------------------------------------- Makefile
def _make(tmp_path: Path, *targets: str) -> str:
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", f"VENV={venv}", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="make")
def test_make_creates_the_venv_only_when_missing_or_stale(tmp_path):
    venv = tmp_path / "venv"
    missing = _make(tmp_path, "test")
    assert f"-m venv {venv}" in missing and "pip install -r requirements.txt" in missing
    assert f"{venv}/bin/python -m pytest" in missing
    smoke = _make(tmp_path, "smoke")
    assert f"{venv}/bin/python train.py experiment=rdeic_l2 debug=smoke" in smoke
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()  # installed after requirements.txt changed: fresh
    fresh = _make(tmp_path, "test")
    assert "pip install" not in fresh and f"{venv}/bin/python -m pytest" in fresh
    stamp_time = (ROOT / "requirements.txt").stat().st_mtime - 10
    os.utime(venv / ".installed", (stamp_time, stamp_time))  # requirements.txt is newer
    assert "pip install -r requirements.txt" in _make(tmp_path, "test")

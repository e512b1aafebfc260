"""eval.py: real bitstreams, checkpoints × datasets, resume, sharding over 2 gloo processes."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

import modules.evaluation
from modules.evaluation import TIMING_COLUMNS
from tests.conftest import compose_config, run_script

#: metrics without weight files, and FID/KID on untrained Inception features
FAST_METRICS = [
    "metrics.names=[psnr,ms_ssim,ssim,gmsd]",
    "metrics.pretrained=false",
    "metrics.fid=true",
    "metrics.fid_min_patches=1",
]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _without_timings(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def test_eval_entry_point_writes_real_bitstream_results(tmp_path, smoke_run):
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    result = run_script(
        "eval.py",
        f"ckpt_path={ckpt}",
        "data=sample",
        "+data.test.limit=3",
        "save_outputs=true",
        "metrics=basic",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "eval" / "elic_l0.032" / "results"  # experiment name from the run config
    out = root / "sample" / "elic_l0.032-last"
    results = json.loads((out / "results.json").read_text())
    assert results["name"] == "elic_l0.032"
    assert {"bpp", "bpp_est", "psnr-rgb", "ms-ssim-rgb", "ssim-rgb", "gmsd", "vif"} <= set(
        results["results"]
    )
    assert results["untrained_backbones"] == []
    rows = _rows(out / "per_image.csv")
    assert [r["name"] for r in rows] == ["astronaut", "coffee", "chelsea"]
    for row in rows:
        stream = out / "outputs" / f"{row['name']}.bin"
        assert stream.stat().st_size == int(row["bytes"])  # bpp counts every byte written
        pixels = int(row["height"]) * int(row["width"])
        assert math.isclose(float(row["bpp"]), 8 * int(row["bytes"]) / pixels)
        reconstruction = Image.open(out / "outputs" / f"{row['name']}.png")
        assert reconstruction.size == (int(row["width"]), int(row["height"]))
    mean_bpp = sum(float(r["bpp"]) for r in rows) / len(rows)
    assert math.isclose(results["results"]["bpp"][0], mean_bpp)
    summary = (root / "summary.md").read_text()
    assert "## sample" in summary and "elic_l0.032-last" in summary


def test_checkpoints_by_datasets_make_one_curve_per_dataset(tmp_path, smoke_run):
    from eval import evaluate

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("a", "b"):
        shutil.copy(smoke_run / "checkpoints" / "last.ckpt", ckpts / f"{name}.ckpt")
    cfg = compose_config(
        "eval",
        [f"ckpt_path={ckpts}/*.ckpt", "datasets=[kodak,tecnick]", *FAST_METRICS],
        tmp_path / "run",
    )
    # stand-in Kodak and Tecnick folders: sample photos saved as PNG files
    for folder, names in [("kodak", ["astronaut", "coffee", "chelsea"]), ("tecnick", ["rocket"])]:
        (tmp_path / folder).mkdir()
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()).save(tmp_path / folder / f"{name}.png")
    cfg.paths.data_root = str(tmp_path)
    with pytest.warns(UserWarning, match="expected 24"):
        curves = evaluate(cfg)
    assert set(curves) == {"kodak", "tecnick"}
    kodak_curve = json.loads((tmp_path / "run" / "kodak" / "results.json").read_text())
    assert kodak_curve["checkpoints"] == ["a-a", "b-b"]  # one entry per checkpoint
    assert len(kodak_curve["results"]["bpp"]) == 2
    assert kodak_curve["results"]["bpp"][0] == kodak_curve["results"]["bpp"][1]  # same weights
    assert kodak_curve["results"]["fid"][0] is not None  # fid_min_patches=1
    assert kodak_curve["untrained_backbones"] == ["fid", "kid"]  # labelled, never real numbers
    rows = _rows(tmp_path / "run" / "kodak" / "a-a" / "per_image.csv")
    # 256² patches of 512×512, 300×451, 400×600: 2×2 + 1 shifted, 1×1 + 0, 1×2 + 1
    assert [r["name"] for r in rows] == ["astronaut", "chelsea", "coffee"]
    assert [int(r["patches"]) for r in rows] == [5, 1, 3]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "Untrained backbones" in summary


def test_resume_skips_finished_images(tmp_path, smoke_run, monkeypatch):
    from eval import evaluate

    overrides = [
        f"ckpt_path={smoke_run / 'checkpoints' / 'last.ckpt'}",
        "data=sample",
        "+data.test.limit=4",
        "metrics=basic",
    ]
    cfg = compose_config("eval", overrides, tmp_path / "run")
    first = evaluate(cfg)
    point = tmp_path / "run" / "sample" / "elic_l0.032-last"
    progress = point / "progress" / "rank0.jsonl"
    lines = progress.read_text().splitlines()
    # a run killed while coding the 4th image: its row is cut short
    progress.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])

    coded = []
    original = modules.evaluation.evaluate_image
    monkeypatch.setattr(
        modules.evaluation,
        "evaluate_image",
        lambda codec, item, metrics: coded.append(item["name"]) or original(codec, item, metrics),
    )
    second = evaluate(cfg)
    assert coded == [json.loads(lines[3])["name"]]  # only the unfinished image is coded again
    assert first["sample"]["results"]["bpp"] == second["sample"]["results"]["bpp"]
    assert len(_rows(point / "per_image.csv")) == 4

    # results of other settings are never mixed into the folder
    cfg.decoding = None
    cfg.metrics.names = ["psnr"]
    with pytest.raises(Exception, match="other settings"):
        evaluate(cfg)


def test_one_and_two_gloo_processes_give_identical_rows(tmp_path, smoke_run):
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    common = [
        f"ckpt_path={ckpt}",
        "data=sample",
        "+data.test.limit=5",  # odd: ranks get 3 and 2 images, nothing padded or repeated
        "metrics.names=[psnr,ms_ssim,ssim]",
        *FAST_METRICS[1:],
        "device=cpu",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    single = run_script("eval.py", *common, f"paths.log_dir={tmp_path}/one", env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "eval.py"]
    double = run_script(*launch, *common, f"paths.log_dir={tmp_path}/two", env=env)
    assert double.returncode == 0, double.stderr[-3000:]

    def outputs(root: Path) -> tuple[list[dict[str, str]], dict]:
        point = root / "eval" / "elic_l0.032" / "results" / "sample" / "elic_l0.032-last"
        results = json.loads((point / "results.json").read_text())
        for key in ("encoding_time", "decoding_time"):
            results["results"].pop(key)
        results.pop("description")
        return _without_timings(_rows(point / "per_image.csv")), results

    rows_1, results_1 = outputs(tmp_path / "one")
    rows_2, results_2 = outputs(tmp_path / "two")
    assert len(rows_1) == 5 and rows_1 == rows_2  # every image once, in dataset order
    assert results_1 == results_2  # including FID/KID over the gathered patch features
    progress = tmp_path / "two" / "eval" / "elic_l0.032" / "results" / "sample"
    shards = sorted((progress / "elic_l0.032-last" / "progress").glob("rank*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in shards] == [3, 2]


def test_eval_missing_checkpoint_is_one_clear_error(tmp_path):
    result = run_script("eval.py", f"ckpt_path={tmp_path}/none.ckpt", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr and "Traceback" not in result.stderr
    result = run_script("eval.py", f"ckpt_path={tmp_path}/*.ckpt", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and "no checkpoint matches" in result.stderr


def test_trainer_presets_compose():
    for preset in ("cpu", "gpu", "ddp", "slurm"):
        cfg = compose_config("train", [f"trainer={preset}"])
        assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"
    slurm = compose_config("train", ["trainer=slurm"]).trainer
    assert slurm.strategy == "ddp" and slurm.plugins[0].auto_requeue
    # fp32 (TF32) training: bf16 only for the large frozen networks, inside the methods
    assert compose_config("train", ["trainer=gpu"]).trainer.precision == "32-true"

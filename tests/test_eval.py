"""eval.py on a trained checkpoint: real bitstreams, CompressAI-format results, per-image rows."""

from __future__ import annotations

import csv
import json
import math

from PIL import Image

from tests.conftest import compose_config, run_script


def test_eval_entry_point_writes_real_bitstream_results(tmp_path, smoke_run):
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    result = run_script(
        "eval.py",
        f"ckpt_path={ckpt}",
        "data=sample",
        "+data.test.limit=3",
        "save_outputs=true",
        f"paths.log_dir={tmp_path}",
        "run_name=e1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "eval" / "elic_l0.032" / "e1"  # experiment name read from the run's config
    results = json.loads((out / "results.json").read_text())
    assert results["name"] == "elic_l0.032"
    assert {"bpp", "bpp_est", "psnr-rgb", "ms-ssim-rgb"} <= results["results"].keys()
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
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


def test_eval_missing_checkpoint_is_one_clear_error(tmp_path):
    result = run_script("eval.py", f"ckpt_path={tmp_path}/none.ckpt", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr and "Traceback" not in result.stderr


def test_trainer_presets_compose():
    for preset in ("cpu", "gpu", "ddp", "slurm"):
        cfg = compose_config("train", [f"trainer={preset}"])
        assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"
    slurm = compose_config("train", ["trainer=slurm"]).trainer
    assert slurm.strategy == "ddp" and slurm.plugins[0].auto_requeue
    assert compose_config("train", ["trainer=gpu"]).trainer.precision == "bf16-mixed"

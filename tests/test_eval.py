"""eval.py: real bitstreams, checkpoints × datasets, resume, sharding over 2 gloo processes."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import warnings
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image

import modules.evaluation
from modules.evaluation import BASE_COLUMNS, TIMING_COLUMNS, result_key
from modules.utils import ConfigError
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
        "data.test.limit=3",
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
    kodak = json.loads((tmp_path / "run" / "kodak" / "results.json").read_text())
    assert kodak == curves["kodak"] and [c["name"] for c in kodak["curves"]] == ["sweep"]
    kodak_curve = kodak["curves"][0]  # one curve: the sweep of a.ckpt and b.ckpt
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
        "data.test.limit=4",
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
    assert (
        first["sample"]["curves"][0]["results"]["bpp"]
        == (second["sample"]["curves"][0]["results"]["bpp"])
    )
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
        "data.test.limit=5",  # odd: ranks get 3 and 2 images, nothing padded or repeated
        "data.test.center_crop=256",  # one FID patch per image: 5 to gather
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
        for key in [k for k in results["results"] if "_time" in k]:  # with their std
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
    from eval import evaluate

    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):  # the same, in-process
        evaluate(compose_config("eval", [f"ckpt_path={tmp_path}/*.ckpt"], tmp_path / "glob"))


def test_trainer_presets_compose():
    for preset in ("cpu", "gpu", "ddp", "slurm"):
        cfg = compose_config("train", [f"trainer={preset}"])
        assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"
    slurm = compose_config("train", ["trainer=slurm"]).trainer
    assert slurm.strategy == "ddp" and slurm.plugins[0].auto_requeue
    # fp32 (TF32) training: bf16 only for the large frozen networks, inside the methods
    assert compose_config("train", ["trainer=gpu"]).trainer.precision == "32-true"


# ---------------------------------------------------------------------------- bookkeeping
def _sample_cfg(smoke_run: Path, run_dir: Path, *overrides: str):
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "data=sample", "metrics.names=[psnr,gmsd]", "metrics.fid=false"]
    return compose_config("eval", [*common, *overrides], run_dir)


def test_resume_key_refuses_any_setting_that_changes_a_number(tmp_path, smoke_run):
    from eval import evaluate

    small = ["data.test.limit=1", "data.test.center_crop=128"]
    cfg = _sample_cfg(smoke_run, tmp_path / "run", *small)
    evaluate(cfg)
    meta = json.loads((tmp_path / "run" / "sample" / "elic_l0.032-last" / "meta.json").read_text())
    assert meta["data"]["center_crop"] == 128 and meta["data"]["limit"] == 1
    assert meta["metrics"] == {"names": ["psnr", "gmsd"], "fid": False, "pretrained": True}
    assert len(meta["model"]) == 8 and meta["device"] == "cpu"
    changes = {
        "data.test.center_crop=64": "data.center_crop: 128 -> 64",
        "data.test.limit=2": "data.limit: 1 -> 2",
        "data.test.resize_short_side=300": "data.resize_short_side: null -> 300",
        "data.test.expected_count=8": "data.expected_count: null -> 8",
        "metrics.names=[psnr]": 'metrics.names: ["psnr", "gmsd"] -> ["psnr"]',
        "metrics.pretrained=false": "metrics.pretrained: true -> false",
    }
    for override, named in changes.items():
        cfg = _sample_cfg(smoke_run, tmp_path / "run", *small, override)
        with pytest.raises(ConfigError) as error:
            evaluate(cfg)
        assert named in str(error.value) and "\n" not in str(error.value), override


def test_resume_key_of_tuple_options_matches_what_was_stored(tmp_path):
    """A coding option held as a tuple (CorrDiff's γ bounds) is stored as a JSON list; the
    same settings must resume, not be refused as different."""
    from modules.evaluation import _check_meta

    meta = {"encoding": {"bounds": (0.0, 1.0)}, "decoding": {"steps": 8}}
    _check_meta(tmp_path, meta, resume=True)
    _check_meta(tmp_path, meta, resume=True)  # the re-run: same settings
    with pytest.raises(ConfigError, match=r"encoding.bounds: \[0.0, 1.0\] -> \[0.0, 0.5\]"):
        _check_meta(tmp_path, {**meta, "encoding": {"bounds": (0.0, 0.5)}}, resume=True)


def test_every_point_evaluated_into_a_folder_stays_in_its_curves(tmp_path, smoke_run, capsys):
    from eval import evaluate

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for name in ("a", "b"):
        shutil.copy(smoke_run / "checkpoints" / "last.ckpt", ckpts / f"{name}.ckpt")
    small = ["data.test.limit=2", "data.test.center_crop=128"]
    for name in ("a", "b"):  # two evaluations into the same folder
        overrides = [f"ckpt_path={ckpts / name}.ckpt", *small]
        evaluate(_sample_cfg(smoke_run, tmp_path / "run", *overrides))
    curves = json.loads((tmp_path / "run" / "sample" / "results.json").read_text())["curves"]
    assert [(c["name"], c["checkpoints"]) for c in curves] == [("a", ["a-a"]), ("b", ["b-b"])]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "### a\n" in summary and "### b\n" in summary and "| a-a | 2 |" in summary
    # a resumed evaluation shows the whole set done
    capsys.readouterr()
    evaluate(_sample_cfg(smoke_run, tmp_path / "run", f"ckpt_path={ckpts / 'a'}.ckpt", *small))
    assert "2/2" in capsys.readouterr().err


def _point(folder: Path, curve: str, bpp: float, decoding: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")
    results = {"name": curve, "curve": curve, "decoding": decoding, "images": 3}
    results |= {"counts": {"bpp": 3, "psnr-rgb": 3}, "untrained_backbones": []}
    results["results"] = {"bpp": [bpp], "psnr-rgb": [30 + bpp]}
    (folder / "results.json").write_text(json.dumps(results))


def test_curves_are_one_per_sweep_and_decoding_setting(tmp_path):
    from modules.evaluation import write_curves, write_summary

    dataset = tmp_path / "kodak"
    for name, bpp in [("rdeic_l2", 0.3), ("rdeic_l1", 0.1)]:
        _point(dataset / f"{name}-last", "rdeic", bpp, {"steps": 2})
        _point(dataset / f"{name}-last-steps=5", "rdeic (steps=5)", bpp + 0.01, {"steps": 5})
    curves = write_curves(dataset, "kodak")["curves"]
    assert [c["name"] for c in curves] == ["rdeic", "rdeic (steps=5)"]
    assert curves[0]["checkpoints"] == ["rdeic_l1-last", "rdeic_l2-last"]  # by bpp
    assert curves[0]["results"]["bpp"] == [0.1, 0.3]
    assert curves[1]["decoding"] == [{"steps": 5}, {"steps": 5}]
    assert json.loads((dataset / "results.json").read_text())["curves"] == curves
    summary = write_summary(tmp_path / "summary.md", "test")
    assert summary.count("| rdeic_l1-last") == 2 and "psnr-rgb [dB]" in summary


def test_small_images_are_skipped_and_metrics_counted_where_defined(tmp_path, smoke_run):
    from eval import evaluate

    folder = tmp_path / "mine"
    folder.mkdir()
    photo = skimage.data.astronaut()
    for name, size in [("dot", 1), ("small", 96), ("large", 192)]:  # MS-SSIM needs 161 px
        Image.fromarray(photo[:size, :size]).save(folder / f"{name}.png")
    overrides = ["data=folder", f"data.test.root={folder}", "metrics.names=[psnr,ms_ssim,gmsd]"]
    cfg = _sample_cfg(smoke_run, tmp_path / "run", *overrides)
    with pytest.warns(UserWarning, match=r"dot.png: 1×1 has a side below min_side=64"):
        curves = evaluate(cfg)
    curve = curves["mine"]["curves"][0]  # data=folder names the set after its folder
    point = tmp_path / "run" / "mine" / "elic_l0.032-last"
    rows = _rows(point / "per_image.csv")
    assert [r["name"] for r in rows] == ["large", "small"]
    assert math.isnan(float(rows[1]["ms_ssim"])) and not math.isnan(float(rows[0]["ms_ssim"]))
    assert curve["images"] == [2] and curve["counts"][0]["ms-ssim-rgb"] == 1
    assert curve["results"]["ms-ssim-rgb"][0] == pytest.approx(float(rows[0]["ms_ssim"]))
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "(1 of 2 images)" in summary


def test_timing_warms_up_once_per_point_and_reports_spread(tmp_path, smoke_run, monkeypatch):
    from eval import evaluate

    sizes = []
    original = modules.evaluation.code_image
    monkeypatch.setattr(
        modules.evaluation,
        "code_image",
        lambda codec, image: sizes.append(tuple(image.shape[-2:])) or original(codec, image),
    )
    evaluate(_sample_cfg(smoke_run, tmp_path / "run", "data.test.limit=3"))
    assert len(sizes) == 4 and sizes[0] == (256, 256)  # one untimed warm-up crop, then 3 images
    point = tmp_path / "run" / "sample" / "elic_l0.032-last"
    results = json.loads((point / "results.json").read_text())["results"]
    seconds = [float(r["encode_s"]) for r in _rows(point / "per_image.csv")]
    assert results["encoding_time_std"][0] == pytest.approx(statistics.stdev(seconds))
    assert results["decoding_time_std"][0] > 0
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert " ± " in summary and "encoding_time [s]" in summary and "bpp [bpp]" in summary


def test_per_image_columns_map_one_to_one_to_result_keys(tmp_path, smoke_run):
    from eval import evaluate

    evaluate(_sample_cfg(smoke_run, tmp_path / "run", "data.test.limit=1"))
    point = tmp_path / "run" / "sample" / "elic_l0.032-last"
    columns = list(_rows(point / "per_image.csv")[0])
    results = json.loads((point / "results.json").read_text())["results"]
    averaged = columns[BASE_COLUMNS.index("bpp") :]
    keys = [result_key(c) for c in averaged]
    assert keys == ["bpp", "bpp_est", "encoding_time", "decoding_time", "psnr-rgb", "gmsd"]
    assert len(set(keys)) == len(keys) and set(keys) <= set(results)
    assert set(results) - set(keys) == {"encoding_time_std", "decoding_time_std"}


def test_undefined_metrics_are_nan_not_perfect():
    from modules.metrics import MetricSuite

    suite = MetricSuite(["psnr", "gmsd", "lpips_alex", "lpips_vgg"], fid=False, pretrained=False)
    generator = torch.Generator().manual_seed(0)
    for side, defined in [
        (5, {"psnr"}),
        (16, {"psnr", "gmsd", "lpips_vgg"}),
        (32, set(suite.names)),
    ]:
        a, b = ((torch.rand(1, 3, side, side, generator=generator) * 255).round() for _ in "ab")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = suite(a, b)
        assert {k for k, v in scores.items() if not math.isnan(v)} == defined, side
        assert all(v > 0 for k, v in scores.items() if k != "psnr" and k in defined)

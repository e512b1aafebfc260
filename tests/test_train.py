"""The smoke run, kill-and-resume, and a 2-process DDP fit, through the real entry point."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, compose_config, run_script


class ResumeProbe(L.Callback):
    """Records the step and optimizer state a (resumed) fit starts from."""

    seen: ClassVar[list[dict]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ResumeProbe.seen.append(
            {
                "step": trainer.global_step,
                "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
            }
        )


def test_smoke_run_trains_and_evaluates(smoke_run: Path):
    last = smoke_run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 6
    assert checkpoint["codec_class"] == "modules.elic.ELICModule"
    events = EventAccumulator(str(smoke_run / "tensorboard"))
    events.Reload()
    assert "probes/original_reconstruction" in events.Tags()["images"]  # fixed probe images
    assert {"train/loss", "train/bpp", "val/loss", "lr/main", "lr/aux"} <= set(
        events.Tags()["scalars"]
    )
    # the RD callback coded its images through real bitstreams at steps 3 and 6
    assert [e.step for e in events.Scalars("rd/bpp")] == [3, 6]
    assert {"rd/psnr", "rd/lpips_alex", "rd/objective"} <= set(events.Tags()["scalars"])
    assert "rd/original_decoded" in events.Tags()["images"]
    best = torch.load(smoke_run / "checkpoints" / "best_rd.ckpt", weights_only=False)
    assert best["global_step"] in (3, 6)
    results = json.loads((smoke_run / "eval" / "sample" / "results.json").read_text())
    assert results["name"] == "elic_l0.032"
    rows = (smoke_run / "eval" / "sample" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 8  # header + the eight sample photos
    assert results["results"]["bpp"][0] > 0 and results["results"]["psnr-rgb"][0] > 5


def _wait_for_checkpoint(path: Path, proc: subprocess.Popen, min_step: int) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if path.is_file():
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # being written right now
                checkpoint = None
            if checkpoint and checkpoint["global_step"] >= min_step:
                return checkpoint
        time.sleep(0.5)
    raise TimeoutError(f"{path} did not appear")


def test_killed_run_resumes_at_same_step_and_optimizer_state(tmp_path):
    overrides = [
        "experiment=elic_l0.032",
        "debug=smoke",
        "run_name=killed",
        "evaluate=false",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "logger=csv",
    ]
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            *overrides,
            f"paths.log_dir={tmp_path}",
            "trainer.max_steps=100000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = tmp_path / "train" / "elic_l0.032" / "killed"
    try:
        _wait_for_checkpoint(run_dir / "checkpoints" / "last.ckpt", proc, min_step=4)
    finally:
        proc.kill()
        proc.wait()
    saved = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )

    from train import train

    ResumeProbe.seen.clear()
    cfg = compose_config(
        "train",
        [
            *overrides,
            f"trainer.max_steps={saved['global_step'] + 2}",
            "+callbacks.probe._target_=tests.test_train.ResumeProbe",
        ],
        run_dir,
    )
    train(cfg)
    [start] = ResumeProbe.seen
    assert start["step"] == saved["global_step"]
    expected = saved["optimizer_states"][0]["state"]
    assert expected.keys() == start["optimizer"]["state"].keys()
    for index, state in expected.items():
        for name, value in state.items():
            assert torch.equal(start["optimizer"]["state"][index][name].cpu(), value), name
    resumed = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert resumed["global_step"] == saved["global_step"] + 2


def test_two_process_ddp_fit_on_gloo(tmp_path):
    result = run_script(
        "train.py",
        "experiment=elic_l0.032",
        "debug=smoke",
        "run_name=ddp",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=4",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "data.test.limit=3",  # odd: the ranks evaluate 2 and 1 images (not the 1411² photo)
        "logger=csv",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "train" / "elic_l0.032").iterdir())
    assert [r.name for r in runs] == ["ddp"]  # both ranks wrote into one run folder
    checkpoint = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    with open(runs[0] / "eval" / "sample" / "per_image.csv", newline="") as f:
        assert len(f.read().splitlines()) == 1 + 3  # every image once over the two ranks
    # both ranks evaluated (sharded) and logged the same RD means
    metrics = (runs[0] / "csv").rglob("metrics.csv")
    assert any("rd/bpp" in path.read_text().splitlines()[0] for path in metrics)

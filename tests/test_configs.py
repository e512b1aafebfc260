"""Every experiment composes, instantiates, and bad command lines fail with one clear error."""

from __future__ import annotations

import hydra
import pytest
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, compose_config, run_script

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def test_experiments_exist():
    assert set(EXPERIMENTS) >= {
        f"elic_l{lmbda}" for lmbda in (0.45, 0.15, 0.032, 0.016, 0.008, 0.004)
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path / "run")
    for group in ("data", "model", "trainer", "callbacks", "logger", "paths"):
        OmegaConf.to_container(cfg[group], resolve=True)  # every interpolation resolves
    assert cfg.trainer.accelerator == "gpu"
    smoke = compose_config("train", [f"experiment={experiment}", "debug=smoke"], tmp_path / "s")
    assert smoke.trainer.accelerator == "cpu" and smoke.data.train.source == "sample"
    assert smoke.experiment_name == experiment
    # the smoke preset shrinks the networks but keeps everything else, e.g. the rate point
    shrunk = OmegaConf.load(CONFIGS / "debug" / "model" / "smoke" / f"{model_name(cfg)}.yaml")
    for key, value in cfg.model.items():
        if key not in shrunk and key != "backbone":  # debug=smoke also swaps in tiny_sd
            assert smoke.model[key] == value, key
    model = hydra.utils.instantiate(smoke.model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 5_000_000


def model_name(cfg) -> str:
    return cfg.model._target_.split(".")[1]


def test_elic_rate_points_are_distinct(tmp_path):
    lambdas = {
        compose_config("train", [f"experiment={e}"]).model.lmbda
        for e in EXPERIMENTS
        if e.startswith("elic_")
    }
    assert lambdas == {0.45, 0.15, 0.032, 0.016, 0.008, 0.004}


def test_run_folder_is_stable(monkeypatch):
    from modules.utils import run_id

    assert run_id("mine") == "mine"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_id(None) == "slurm4242"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_id(None) == "torchrun_abc"


def test_unknown_experiment_is_one_clear_error():
    result = run_script("train.py", "experiment=elic_l9", "debug=smoke")
    assert result.returncode != 0
    assert "Could not find 'experiment/elic_l9'" in result.stderr
    assert "elic_l0.032" in result.stderr  # lists the available ones


def test_bad_override_is_one_clear_error():
    result = run_script("train.py", "experiment=elic_l0.032", "model.no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr and "Traceback" not in result.stderr


def test_missing_dataset_names_folder_and_fix(tmp_path):
    result = run_script(
        "train.py",
        "experiment=elic_l0.032",
        "trainer=cpu",
        f"paths.data_root={tmp_path}/nowhere",
        f"paths.log_dir={tmp_path}/logs",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert f"{tmp_path}/nowhere/LSDIR" in error[0] and "paths.data_root" in error[0]


def test_rejected_config_value_is_one_clear_error(tmp_path):
    result = run_script(
        "train.py",
        "experiment=elic_l0.032",
        "debug=smoke",
        "model.groups=[4,4,8]",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.groups [4, 4, 8] must sum to model.M=32" in result.stderr

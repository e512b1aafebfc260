"""Shared fixtures: offline environment, composed real configs, a trained tiny ELIC."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from modules.utils import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
register_resolvers()


def compose_config(name: str, overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """Compose configs/<name>.yaml as the entry point would, with the run folder at `run_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    if run_dir is not None:
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            cfg.paths.log_dir = str(run_dir.parent)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task never sees the hydra node
    if run_dir is not None:  # as Hydra does for a real run
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    GlobalHydra.instance().clear()
    return cfg


def load_script(name: str):
    """scripts/<name>.py imported in-process (scripts/ is not a package), once."""
    import importlib.util

    module_name = f"scripts_{name}"
    if module_name not in sys.modules:
        path = ROOT / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def run_script(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None):
    """Run a repository script in a subprocess (real entry point, real argv)."""
    import subprocess

    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One real smoke run of the ELIC recipe (train + evaluation); returns its run folder."""
    from train import train

    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    cfg = compose_config("train", ["experiment=elic_l0.032", "debug=smoke"], run_dir)
    train(cfg)
    return run_dir


@pytest.fixture(scope="session")
def trained_elic(tmp_path_factory) -> Path:
    """A tiny ELIC trained for 60 steps on the sample photos (enough for its entropy model to
    fit the latents); returns the path of its checkpoint."""
    import lightning as L

    from datamodules import ImageDataModule
    from modules.elic import ELICModule

    L.seed_everything(0)
    model = ELICModule(lmbda=0.032, N=16, M=32, groups=[4, 4, 8, 16], lr=1e-3)
    data = ImageDataModule(train={"source": "sample"}, batch_size=4, num_workers=0, crop_size=128)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    path = tmp_path_factory.mktemp("elic") / "elic.ckpt"
    trainer.save_checkpoint(path)
    return path


#: per method, an experiment whose `debug=smoke` model is that method's tiny codec. The tests that
#: must cover every method (tests/test_crafted_streams.py) run over this registry: a new method
#: adds its line here.
TINY_EXPERIMENTS = {
    "elic": "elic_l0.032",
    "cdc": "cdc_x_rho0_b0.0032",
    "rdeic": "rdeic_l2",
    "corrdiff": "corrdiff_r0.1",
    "foundation": "foundation_sd21",
    "foundation_naive": "foundation_naive",
}


@pytest.fixture(scope="session")
def tiny_codec():
    """`tiny_codec(method)`: the method's tiny codec of its smoke config (random weights, CDF
    tables built, eval mode), built once per session."""
    import hydra
    import torch

    codecs = {}

    def get(method: str):
        if method not in codecs:
            cfg = compose_config(
                "train", [f"experiment={TINY_EXPERIMENTS[method]}", "debug=smoke"]
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                codec = hydra.utils.instantiate(cfg.model, _convert_="all")
            codec.eval().update(force=True)
            codecs[method] = codec
        return codecs[method]

    return get

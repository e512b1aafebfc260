"""Helpers of the entry points: run ids, resume, instantiation, user-facing errors."""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def run_id(name: str | None = None) -> str:
    """Stable id of a run: `name`, else SLURM_JOB_ID, else torchrun's run id, else a timestamp.

    Every DDP rank and a requeued SLURM job resolve the same id, hence the same run folder.
    """
    if name:
        return str(name)
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm{os.environ['SLURM_JOB_ID']}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if elastic != "none":
        return f"torchrun_{elastic}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def experiment_name_of(ckpt_path: str) -> str:
    """Experiment name recorded in a checkpoint's run folder, else the checkpoint file stem."""
    run_config = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if run_config.is_file():
        name = OmegaConf.load(run_config).get("experiment_name")
        if name:
            return str(name)
    return Path(ckpt_path).stem


def expand_checkpoints(ckpt_path: str | Sequence[str]) -> list[str]:
    """Checkpoint files of `ckpt_path`: a path, a glob, or a list of them (in the given order,
    each glob sorted); a pattern that matches nothing is an error naming it."""
    patterns = [ckpt_path] if isinstance(ckpt_path, str) else list(ckpt_path)
    paths: list[str] = []
    for pattern in map(str, patterns):
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no checkpoint matches {pattern}")
            paths += matches
        elif Path(pattern).is_file():
            paths.append(pattern)
        else:
            raise FileNotFoundError(f"checkpoint not found: {pattern}")
    return list(dict.fromkeys(paths))


def sweep_name(ckpt_path: str | Sequence[str] | None) -> str:
    """Name of the results of `ckpt_path`: the experiment name of its checkpoints, or for a
    sweep of several experiments (rdeic_l2, rdeic_l1, ...) their common stem (rdeic)."""
    if ckpt_path is None:  # not given: eval.py says so itself
        return "eval"
    try:
        names = sorted({experiment_name_of(p) for p in expand_checkpoints(ckpt_path)})
    except FileNotFoundError:  # reported by eval.py itself, with the context
        names = [Path(str(ckpt_path)).stem]
    if len(names) == 1:
        return names[0]
    # drop the rate parameter: "rdeic_l" -> "rdeic", "cdc_x_rho0_b0.00" -> "cdc_x_rho0"
    stem = re.sub(r"[_\-.]*[a-z]{0,6}[\d.]*$", "", os.path.commonprefix(names))  # noqa: RUF071 (names, not paths)
    return stem or "sweep"


def config_options(group: str) -> str:
    """The options of a config group (configs/<group>/*.yaml), comma-separated, for help texts."""
    folder = Path(__file__).resolve().parents[1] / "configs" / group
    return ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))


def register_resolvers() -> None:
    """OmegaConf resolvers used by the configs (idempotent)."""
    resolvers = {
        "run_id": run_id,
        "eval_name": sweep_name,
        "sum": lambda *xs: sum(xs),
        "path_name": lambda path: Path(str(path)).name,
        "config_options": config_options,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """Checkpoint to resume from: `ckpt_path`, else the newest last/SLURM checkpoint of the run."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
        return str(path)
    if not cfg.get("auto_resume", True):
        return None
    run_dir = Path(cfg.paths.output_dir)
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), run_dir / "checkpoints" / "last.ckpt"]
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        return None
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    log.info(f"Resuming from {newest}")
    return str(newest)


def init_weights(model: L.LightningModule, ckpt_path: str) -> None:
    """Load the weights of `ckpt_path` into `model` strictly (frozen networks excepted)."""
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from={ckpt_path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state)
    log.info(f"Initialised weights from {path}")


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a callbacks/logger group config."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c and "_target_" in c]


@rank_zero_only
def log_hyperparameters(model: L.LightningModule, trainer: L.Trainer, cfg: DictConfig) -> None:
    """Send the resolved config and parameter counts to every logger."""
    params = {
        "params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params/frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }
    hparams = {**OmegaConf.to_container(cfg, resolve=True), **params}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's error types that mean bad input, not a bug: bad config values, missing
    files, weights or datasets, unreadable images and bad streams."""
    from datamodules.io import ImageLoadError
    from modules.entropy import BitstreamError

    return ConfigError, FileNotFoundError, BitstreamError, ImageLoadError


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing cause of an exception, if any: one of `user_errors()` anywhere in its
    cause chain, a mandatory config value left unset, or a value that a class rejected (ValueError
    or TypeError) while Hydra built it from the config."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import MissingMandatoryValue

    known = user_errors()
    while exc is not None:
        if isinstance(exc, known):
            return exc
        if isinstance(exc, MissingMandatoryValue):
            key = getattr(exc, "full_key", None) or str(exc).splitlines()[0]
            return ConfigError(f"{key} is required: set it on the command line ({key}=...)")
        if isinstance(exc, InstantiationException) and isinstance(
            exc.__cause__, ValueError | TypeError
        ):
            return exc.__cause__
        exc = exc.__cause__
    return None


def one_line(exc: BaseException) -> str:
    """An error message on one line (continuation lines joined with "; ")."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Report user errors as one line on stderr (exit code 2); let real bugs raise."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as exc:
            cause = user_error(exc)
            if cause is None:
                raise
            log.debug("user error", exc_info=exc)
            print(f"error: {one_line(cause)}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def resolve_device(name: str) -> Any:
    """The torch.device of a `device` setting: auto (CUDA when available), cpu, cuda or cuda:N;
    ConfigError for anything else or for CUDA on a machine without it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<index>, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} but CUDA is not available on this machine; use device=cpu "
                "(or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device

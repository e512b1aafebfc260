"""Evaluate a checkpoint with real bitstreams: `python eval.py ckpt_path=<ckpt> data=<set>`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from modules.base import load_codec
from modules.evaluation import evaluate_codec
from modules.utils import register_resolvers, task_wrapper

log = logging.getLogger(__name__)
register_resolvers()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Load the codec of `cfg.ckpt_path`, code every image of `cfg.data`, write the results."""
    device = (
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    codec = load_codec(cfg.ckpt_path, map_location=device)
    codec.set_decoding(**(cfg.decoding or {}))
    datamodule = hydra.utils.instantiate(cfg.data)
    out_dir = Path(cfg.paths.output_dir)
    results = evaluate_codec(
        codec,
        datamodule.eval_images(),
        out_dir,
        name=cfg.experiment_name,
        description=f"{datamodule.test_name}; {cfg.ckpt_path}; {device}",
        save_outputs=cfg.save_outputs,
    )
    log.info(f"Results in {out_dir}: {results['results']}")
    return results


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
@task_wrapper
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()

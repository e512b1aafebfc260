"""Train a codec: `python train.py experiment=<name> [debug=smoke] [key=value ...]`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from modules.evaluation import evaluate_point, metric_suite
from modules.utils import (
    init_weights,
    instantiate_group,
    log_hyperparameters,
    register_resolvers,
    resume_checkpoint,
    task_wrapper,
)

log = logging.getLogger(__name__)
register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the model of `cfg` (resuming this run if it has a checkpoint), then evaluate it."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.get("accelerator") != "cpu":  # CPU runs keep strict fp32 matmuls
        torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "highest"))
    log.info(f"Run folder: {cfg.paths.output_dir}")
    # plain containers (not OmegaConf nodes) as hyper-parameters: checkpoints load weights-only
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    if cfg.get("init_from"):
        init_weights(model, cfg.init_from)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
    )
    log_hyperparameters(model, trainer, cfg)
    metrics_suite = None
    if cfg.get("evaluate") and datamodule.hparams.test:
        # built before fitting, so that a missing metric weight file fails now, not after training
        metrics_suite = metric_suite(cfg.metrics, trainer.strategy.root_device)
    if any(p.requires_grad for p in model.parameters()):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg))
    else:  # a fixed codec (e.g. foundation_naive): its checkpoint alone rebuilds it for eval.py
        log.info("The model has no trainable parameters: nothing to fit")
        trainer.strategy.connect(model)
        trainer.save_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
        model.to(trainer.strategy.root_device)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if metrics_suite is not None:
        model.eval().update(force=True)
        results = evaluate_point(
            model,
            datamodule.eval_images(),
            metrics_suite,
            Path(cfg.paths.output_dir) / "eval" / datamodule.test_name,
            name=cfg.experiment_name,
            description=datamodule.test_name,
            meta={"dataset": datamodule.test_name},
            fid_min_patches=cfg.metrics.fid_min_patches,
            resume=False,
        )
        metrics.update({f"test/{k}": v[0] for k, v in results["results"].items()})
        log.info(f"Evaluation with real bitstreams: {results['results']}")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
@task_wrapper
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()

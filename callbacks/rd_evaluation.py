"""Rate-distortion evaluation with real bitstreams during training, sharded over the ranks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from datamodules import EvalImages, list_items
from modules.base import CodecModule
from modules.evaluation import evaluate_image, gather_objects, mean, rank_and_world
from modules.metrics import MetricSuite
from modules.utils import ConfigError


class RateDistortionEvaluation(L.Callback):
    """Every `every_n_steps`, code a small image set through compress/decompress on all ranks.

    Each rank codes its own share of the images (no padding, no per-image synchronisation) and
    one all-gather collects the rows, so no rank waits longer than the evaluation itself. Logs
    `rd/<metric>` means and an [original | decoded] grid, and keeps `<dirpath>/best_rd.ckpt` by
    `objective`, a weighted sum of metric means (lower is better, e.g. {bpp: 1, lpips_alex: 2};
    a negative weight rewards a higher-is-better metric such as PSNR).
    """

    def __init__(
        self,
        every_n_steps: int = 5000,
        images: dict[str, Any] | None = None,
        limit: int | None = 8,
        metrics: list[str] | tuple[str, ...] = ("psnr", "ms_ssim", "lpips_alex"),
        objective: dict[str, float] | None = None,
        num_grid_images: int = 2,
        dirpath: str | None = None,
        weights_dir: str | None = None,
        pretrained: bool = True,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.images_spec = images
        self.limit = limit
        self.objective = dict(objective or {"bpp": 1.0})
        self.num_grid_images = num_grid_images
        self.dirpath = Path(dirpath) if dirpath else None
        self.metric_options = {
            "names": list(metrics),
            "fid": False,
            "weights_dir": weights_dir,
            "pretrained": pretrained,
        }
        unknown = set(self.objective) - {"bpp", "bpp_est", *self.metric_options["names"]}
        if unknown:
            raise ConfigError(
                f"RD objective uses {sorted(unknown)}, which the callback does not compute "
                f"(metrics: {self.metric_options['names']})"
            )
        self.best: float = math.inf
        self._images: EvalImages | None = None
        self._metrics: MetricSuite | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Build the image set and the metric networks once (missing weights fail here)."""
        if stage != "fit" or self._images is not None:
            return
        spec = self.images_spec
        if spec is None:
            spec = getattr(trainer.datamodule, "specs", {}).get("val")
            if spec is None:
                raise ConfigError("RD evaluation needs `images` or a datamodule with a val set")
        spec = {**spec, "limit": self.limit} if self.limit else dict(spec)
        self._images = EvalImages(
            list_items(spec), spec.get("resize_short_side"), spec.get("center_crop")
        )
        # the strategy's device: the module is moved there only after setup
        self._metrics = MetricSuite(**self.metric_options, device=trainer.strategy.root_device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: CodecModule, *args: Any) -> None:
        step = trainer.global_step
        if self._images is None or step == 0 or step % self.every_n_steps != 0:
            return
        means, grid = self.evaluate(pl_module)
        objective = sum(weight * means[key] for key, weight in self.objective.items())
        means["objective"] = objective
        scalars = {f"rd/{key}": value for key, value in means.items()}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
                if isinstance(logger, TensorBoardLogger) and grid is not None:
                    logger.experiment.add_image("rd/original_decoded", grid, step)
        if self.dirpath is not None and objective < self.best:  # same decision on every rank
            self.best = objective
            trainer.save_checkpoint(self.dirpath / "best_rd.ckpt")

    def evaluate(self, codec: CodecModule) -> tuple[dict[str, float], torch.Tensor | None]:
        """Means over the image set of bpp and every metric (identical on all ranks), and a
        grid of this rank's first decoded images."""
        rank, world = rank_and_world()
        codec.update(force=True)
        rows, pairs = [], []
        for index in range(rank, len(self._images), world):
            item = self._images[index]
            if item is None:
                continue
            row, decoded_8bit, _, _ = evaluate_image(codec, item, self._metrics)
            rows.append(row)
            if len(pairs) < 2 * self.num_grid_images:
                pairs += [item["image"].float() / 255, decoded_8bit[0].cpu() / 255]
        rows = [row for part in gather_objects(rows) for row in part]  # one all-gather
        if not rows:
            raise FileNotFoundError("RD evaluation: none of its images could be read")
        columns = ["bpp", "bpp_est", *self._metrics.names]
        means = {c: mean([r[c] for r in rows]) for c in columns}
        grid = None
        if pairs:  # [original | decoded] rows, cropped to the smallest image of the set
            height = min(p.shape[-2] for p in pairs)
            width = min(p.shape[-1] for p in pairs)
            grid = make_grid(torch.stack([p[:, :height, :width] for p in pairs]), nrow=2)
        return means, grid

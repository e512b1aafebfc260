"""TensorBoard reconstructions of fixed probe images during training."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid

from modules.base import CodecModule


class ProbeImageLogger(L.Callback):
    """Every `every_n_steps`, log [original | reconstruction] of the first validation images.

    The probes are fixed at the start of training so successive grids show the same content.
    Reconstructions come from the eval-mode forward pass (what `decompress(compress(x))` gives).
    """

    def __init__(self, every_n_steps: int = 5000, num_images: int = 4) -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self._probes: Tensor | None = None

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule is None or not any(
            isinstance(lg, TensorBoardLogger) for lg in trainer.loggers
        ):
            return
        probes = []
        for batch in trainer.datamodule.val_dataloader():
            probes.extend(batch[: self.num_images - len(probes)])
            if len(probes) == self.num_images:
                break
        self._probes = torch.stack(probes) if probes else None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: CodecModule, *args) -> None:
        step = trainer.global_step
        if self._probes is None or step % self.every_n_steps != 0:
            return
        pairs = []
        for probe in self._probes:
            x = probe.unsqueeze(0).to(pl_module.device)
            x_hat, _ = pl_module.reconstruct(x)
            pairs.extend([x[0].cpu(), x_hat[0].float().cpu()])
        grid = make_grid(torch.stack(pairs), nrow=2)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("probes/original_reconstruction", grid, step)

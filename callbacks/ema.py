"""EMA of the trainable weights, used for validation, checkpoints and coding."""

from __future__ import annotations

from typing import Any

import lightning as L
from diffusers.training_utils import EMAModel
from torch import nn


class EMA(L.Callback):
    """EMA of the trainable weights on ema_pytorch's schedule, counted in training steps.

    After optimizer step s (0-based, s = trainer.global_step − 1) with s % `every_n_steps` = 0,
    the average copies the weights while s ≤ `update_after_step` and otherwise moves towards
    them with decay min(`decay`, 1 − (1 + s − `update_after_step`)^−`power`): the schedule of
    ema_pytorch 0.2.3's `EMA(beta, update_every, power, update_after_step)` as CDC's trainer
    calls it once per step (0.999 is reached at s = 10,099 with the defaults). The arithmetic is
    diffusers' `EMAModel`, whose update counter is set to s before each update (it would
    otherwise count updates, a horizon `every_n_steps` times longer).

    Validation runs on the EMA weights. Checkpoints hold the EMA weights as their `state_dict`
    (so `eval.py`, the codec CLI and `load_from_checkpoint` get them without knowing about EMA)
    and the online training weights under "ema_online", which a resumed run trains on. At the
    end of training the module keeps the EMA weights.
    """

    def __init__(
        self,
        decay: float = 0.999,
        every_n_steps: int = 10,
        update_after_step: int = 100,
        power: float = 0.75,
    ) -> None:
        self.every_n_steps = every_n_steps
        self._options = {
            "decay": decay,
            "update_after_step": update_after_step,
            "use_ema_warmup": True,
            "power": power,
        }
        self._ema: EMAModel | None = None
        self._last_step: int | None = None
        self._restored_state: dict[str, Any] | None = None

    @staticmethod
    def _trainable(pl_module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [p for _, p in self._trainable(pl_module)]
        self._ema = EMAModel(params, **self._options)
        if self._restored_state is not None:
            self._ema.load_state_dict(self._restored_state)
        self._ema.to(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step - 1  # the optimizer step just taken
        if step % self.every_n_steps != 0 or step == self._last_step:  # (gradient accumulation)
            return
        self._last_step = step
        self._ema.optimization_step = step  # EMAModel.step adds 1 and reads get_decay(s + 1)
        self._ema.step([p for _, p in self._trainable(pl_module)])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._ema is not None and trainer.state.fn == "fit":
            params = [p for _, p in self._trainable(pl_module)]
            self._ema.store(params)
            self._ema.copy_to(params)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._ema is not None and trainer.state.fn == "fit":
            self._ema.restore([p for _, p in self._trainable(pl_module)])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ema.copy_to([p for _, p in self._trainable(pl_module)])

    def state_dict(self) -> dict[str, Any]:
        return self._ema.state_dict() if self._ema is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_state = state_dict or None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._ema is None:
            return
        state = checkpoint["state_dict"]
        named = self._trainable(pl_module)
        checkpoint["ema_online"] = {name: state[name] for name, _ in named}
        for (name, _), shadow in zip(named, self._ema.shadow_params, strict=True):
            state[name] = shadow.detach().clone()

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        online = checkpoint.get("ema_online")
        if online is None:  # a checkpoint written without EMA: start the average from it
            return
        for name, param in self._trainable(pl_module):
            param.data.copy_(online[name])

"""EMA callback: ema_pytorch's schedule in training steps; validation and checkpoints use the
average; a resume trains on online weights."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from callbacks import EMA
from datamodules import ImageDataModule
from modules.elic import ELICModule


class Snapshot(L.Callback):
    """Copies of the trainable weights at the start of fit and at each validation."""

    def __init__(self) -> None:
        self.at_start: dict[str, torch.Tensor] = {}
        self.at_validation: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def weights(module):
        return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer, pl_module):
        self.at_start = self.weights(pl_module)

    def on_validation_start(self, trainer, pl_module):
        self.at_validation.append(self.weights(pl_module))


def fit(tmp_path, max_steps: int, ckpt_path=None):
    torch.manual_seed(0)
    model = ELICModule(lmbda=0.01, N=16, M=32, groups=[4, 4, 8, 16], lr=1e-2)
    data = ImageDataModule(
        train={"source": "sample"},
        val={"source": "sample", "limit": 1},
        batch_size=2,
        num_workers=0,
        crop_size=64,
        val_crop_size=64,
    )
    ema = EMA(decay=0.5, every_n_steps=1, update_after_step=0)
    snapshot = Snapshot()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[ema, snapshot, L.pytorch.callbacks.ModelCheckpoint(tmp_path, save_last=True)],
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, ema, snapshot


def ema_pytorch_decay(step: int) -> float | None:
    """ema_pytorch 0.2.3 `EMA(beta=0.999, update_every=10, power=0.75, update_after_step=100)`
    as CDC's trainer calls it, `update()` once per training step: the call after step s (its
    counter holds s) returns at once unless s % 10 == 0 (None), copies the weights while
    s ≤ 100 (decay 0), else lerps with min(0.999, 1 − (1 + (s + 1) − 100 − 1)^−0.75)."""
    if step % 10:
        return None
    if step <= 100:
        return 0.0
    return min(0.999, 1 - (1 + step - 100) ** -0.75)


@pytest.mark.parametrize(
    ("step", "golden"),
    [(0, 0.0), (100, 0.0), (110, 0.834440), (1000, 0.993919), (5000, 0.998293), (20000, 0.999)],
)
def test_decay_follows_ema_pytorch_counted_in_training_steps(step, golden):
    """Before: diffusers counted updates (one per 10 steps), 0.98882 at 5K and 0.99653 at 20K."""
    assert ema_pytorch_decay(step) == pytest.approx(golden, abs=1e-6)
    ema = EMA()  # the recipe's defaults: 0.999, every 10 steps, power 0.75, after 100
    module = L.LightningModule()
    module.weight = torch.nn.Parameter(torch.zeros(2))
    ema.on_fit_start(None, module)
    ema.on_train_batch_end(SimpleNamespace(global_step=step + 1), module)  # after step s
    assert ema._ema.cur_decay_value == pytest.approx(ema_pytorch_decay(step), abs=1e-12)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.on_train_batch_end(SimpleNamespace(global_step=step + 2), module)  # s + 1: no update
    assert torch.equal(ema._ema.shadow_params[0], torch.zeros(2))


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """(folder, model, EMA callback, snapshots) of one 4-step fit, shared by the tests."""
    folder = tmp_path_factory.mktemp("ema")
    return folder, *fit(folder, max_steps=4)


def test_ema_is_what_validation_checkpoints_and_the_final_module_use(four_steps):
    tmp_path, model, ema, snapshot = four_steps
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    names = list(snapshot.at_start)
    shadow = dict(zip(names, ema._ema.shadow_params, strict=True))
    online = checkpoint["ema_online"]
    differing = [n for n in names if not torch.equal(online[n], checkpoint["state_dict"][n])]
    assert differing  # the average is not the online weights
    for name in names:
        assert torch.equal(checkpoint["state_dict"][name], shadow[name])
        assert torch.equal(model.state_dict()[name], shadow[name])  # the module ends on EMA
    # validation ran on averaged weights, not on the online ones saved next to them
    assert any(not torch.equal(snapshot.at_validation[-1][n], online[n]) for n in names)


def test_resume_trains_on_online_weights_with_the_saved_average(four_steps, tmp_path):
    folder = four_steps[0]
    checkpoint = torch.load(folder / "last.ckpt", weights_only=False)
    _, _, snapshot = fit(tmp_path / "resumed", max_steps=6, ckpt_path=folder / "last.ckpt")
    for name, value in checkpoint["ema_online"].items():
        assert torch.equal(snapshot.at_start[name], value), name

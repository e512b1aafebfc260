"""EMA callback: validation and checkpoints use the average; a resume trains on online weights."""

from __future__ import annotations

import lightning as L
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


def test_ema_is_what_validation_checkpoints_and_the_final_module_use(tmp_path):
    model, ema, snapshot = fit(tmp_path, max_steps=4)
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


def test_resume_trains_on_online_weights_with_the_saved_average(tmp_path):
    fit(tmp_path, max_steps=4)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    _, _, snapshot = fit(tmp_path / "resumed", max_steps=6, ckpt_path=tmp_path / "last.ckpt")
    for name, value in checkpoint["ema_online"].items():
        assert torch.equal(snapshot.at_start[name], value), name

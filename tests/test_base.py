"""CodecModule mechanics: parameter groups, clipping, gradients, frozen networks, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modules.elic import ELICModule


def tiny_elic() -> ELICModule:
    torch.manual_seed(0)
    return ELICModule(lmbda=0.032, N=16, M=32, groups=[4, 4, 8, 16])


class FrozenBackboneELIC(ELICModule):
    """ELIC with a frozen network attached, standing in for a diffusion backbone."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.freeze("backbone", nn.Sequential(nn.Conv2d(3, 3, 3), nn.Dropout(0.5)))


def test_quantiles_are_a_separate_parameter_group():
    model = tiny_elic()
    optimizer = model.configure_optimizers()["optimizer"]
    main, aux = optimizer.param_groups
    quantiles = {id(p) for n, p in model.named_parameters() if n.endswith(".quantiles")}
    assert quantiles and {id(p) for p in aux["params"]} == quantiles
    assert not quantiles & {id(p) for p in main["params"]}
    assert len(main["params"]) + len(aux["params"]) == len(list(model.parameters()))
    assert (main["lr"], aux["lr"]) == (model.hparams.lr, model.hparams.aux_lr)


def test_lr_milestones_decay_only_the_main_group():
    model = ELICModule(lmbda=0.01, N=16, M=32, groups=[4, 4, 8, 16], lr_milestones=[2])
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(model.hparams.lr * 0.1)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(model.hparams.aux_lr)


def test_gradient_clipping_touches_only_the_main_group():
    model = tiny_elic()
    optimizer = model.configure_optimizers()["optimizer"]
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    model.configure_gradient_clipping(optimizer)
    main_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in optimizer.param_groups[0]["params"]])
    )
    assert main_norm == pytest.approx(model.hparams.clip_grad_norm, rel=1e-3)
    assert all(torch.all(p.grad == 10.0) for p in optimizer.param_groups[1]["params"])


def test_every_trainable_parameter_gets_a_gradient():
    model = tiny_elic().train()
    x = torch.rand(2, 3, 128, 128)
    out = model(x)
    (model.rd_loss(out, x)["loss"] + model.aux_loss()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_entropy_path_runs_in_fp32_under_bf16_autocast():
    model = tiny_elic().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert all(lik.dtype == torch.float32 for lik in out["likelihoods"].values())


def test_frozen_network_stays_eval_and_out_of_checkpoints(tmp_path):
    import lightning as L

    model = FrozenBackboneELIC(lmbda=0.01, N=16, M=32, groups=[4, 4, 8, 16])
    model.train()
    assert not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and not any(k.startswith("backbone.") for k in state)
    reloaded = FrozenBackboneELIC.load_from_checkpoint(path)  # strict: only the backbone missing
    assert torch.equal(reloaded.g_a[0].weight, model.g_a[0].weight)
    del state["g_a.0.weight"]
    with pytest.raises(RuntimeError, match=r"missing keys \['g_a.0.weight'\]"):
        reloaded.load_state_dict(state)


def test_checkpoint_with_coder_tables_loads_into_fresh_model():
    model = tiny_elic().eval()
    model.update(force=True)
    fresh = tiny_elic()
    fresh.load_state_dict(model.state_dict())
    fresh.eval().update()
    assert fresh.model_fingerprint == model.model_fingerprint


def test_compressai_elic_weights_load():
    from compressai.models import Elic2022Official

    reference = Elic2022Official(N=16, M=32, groups=[4, 4, 8, 16]).eval()
    model = tiny_elic().eval()
    model.load_state_dict(ELICModule.remap_compressai_state_dict(reference.state_dict()))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)["x_hat"]
        assert torch.allclose(model(x)["x_hat"], expected, atol=1e-5)

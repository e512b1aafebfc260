"""What a user watching a training run sees: one INFO line per phase of the recipe (the same
phases the losses use), and a progress bar described by the optimizer step."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from callbacks import StepProgressBar
from modules.base import CodecModule


def _phase_lines(codec: CodecModule, steps: list[int], monkeypatch, caplog) -> dict[int, str]:
    """The INFO line logged at each of `steps` (a run that starts at steps[0])."""
    lines = {}
    for step in steps:
        monkeypatch.setattr(type(codec), "global_step", property(lambda self, s=step: s))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="modules.base"):
            codec.on_train_batch_start(None, 0)
        if caplog.records:
            (record,) = caplog.records
            lines[step] = record.getMessage()
    return lines


def test_rdeic_logs_each_stage_once_as_its_loss_changes(tiny_codec, monkeypatch, caplog):
    codec = tiny_codec("rdeic")
    hp = codec.hparams  # smoke: stage 1a 2 steps at λ = 2, stage 1b 2 steps, stage 2 2 steps
    monkeypatch.setattr(hp, "lmbda", 0.5)
    monkeypatch.setattr(codec, "_phase", None)
    lines = _phase_lines(codec, [0, 1, 2, 3, 4, 5], monkeypatch, caplog)
    assert lines == {
        0: "stage 1a: independent-step training (λ = 2, lr 0.001) from step 0",
        2: "stage 1b: independent-step training (λ = 0.5, lr 0.0002) from step 2",
        4: "stage 2: fixed-step fine-tuning through 2 sampler steps on 64² crops (λ = 0.5, "
        "lr 0.0002) from step 4",
    }
    for step, line in lines.items():  # the line says what the loss does from that step on
        monkeypatch.setattr(type(codec), "global_step", property(lambda self, s=step: s))
        assert line.startswith(f"stage {codec.stage}")
        assert f"λ = {codec.lmbda:g}," in line
        assert f"lr {hp.lr * codec.lr_factor(step):g})" in line


def test_resumed_run_logs_the_phase_it_resumes_in(tiny_codec, monkeypatch, caplog):
    codec = tiny_codec("cdc")
    monkeypatch.setattr(codec, "_phase", None)
    monkeypatch.setattr(codec.hparams, "warmup_steps", 3)
    lines = _phase_lines(codec, [5, 6], monkeypatch, caplog)
    beta, rho = codec.stage_weights()
    assert lines == {
        5: f"target rate: β = {beta:g}, ρ = {rho:g}, lr 0.001 from step 3 (resumed at 5)"
    }
    monkeypatch.setattr(codec, "_phase", None)
    lines = _phase_lines(codec, [0, 1], monkeypatch, caplog)
    assert lines == {0: "warm-up: β = 1e-06, ρ = 0, lr 0.001 from step 0"}


def test_single_phase_recipes_log_nothing(tiny_codec, monkeypatch, caplog):
    assert _phase_lines(tiny_codec("elic"), [0, 1], monkeypatch, caplog) == {}


@pytest.mark.parametrize(
    ("max_epochs", "expected"),
    [(-1, "Epoch 1 · step 7/300000"), (None, "Epoch 1 · step 7/300000"), (5, "Epoch 1/4")],
)
def test_progress_bar_describes_step_based_runs(max_epochs, expected):
    bar = StepProgressBar()
    max_steps = 300000 if max_epochs != 5 else -1
    bar._trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps, global_step=7)
    assert bar._get_train_description(1).rstrip() == expected


def test_corrdiff_logs_phase_1_then_phase_2_and_skips_an_empty_one(
    tiny_codec, monkeypatch, caplog
):
    codec = tiny_codec("corrdiff")  # smoke: phase 1 for 3 steps, phase 2 for 3 steps
    monkeypatch.setattr(codec, "_phase", None)
    lines = _phase_lines(codec, [0, 1, 2, 3, 4], monkeypatch, caplog)
    assert lines == {
        0: "phase 1: μ_θ alone, E, entropy model and D frozen (lr 0.001) from step 0",
        3: "phase 2: E, entropy model, D and μ_θ jointly (lr 0.001) from step 3",
    }
    for step, line in lines.items():  # the line names the phase the losses use
        monkeypatch.setattr(type(codec), "global_step", property(lambda self, s=step: s))
        assert line.startswith(f"phase {codec.phase}:")
    monkeypatch.setattr(codec, "_phase", None)
    monkeypatch.setattr(codec.hparams, "phase1_steps", 0)
    assert list(_phase_lines(codec, [0], monkeypatch, caplog).values()) == [
        "phase 2: E, entropy model, D and μ_θ jointly (lr 0.001) from step 0"
    ]

"""RDEIC's control module and the controlled forward of a (tiny) SD-shaped UNet."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from modules.nets.rdeic_control import (
    ControlModule,
    control_widths,
    controlled_noise_prediction,
    guided_noise_prediction,
)

#: stabilityai/stable-diffusion-2-1-base unet/config.json (the keys that differ from defaults)
SD21_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "use_linear_projection": True,
}
TINY_UNET = {
    **SD21_UNET,
    "attention_head_dim": [2, 4, 4, 4],
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "sample_size": 16,
}
HINT = 8


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def control(unet) -> ControlModule:
    torch.manual_seed(1)
    return ControlModule(unet.config, hint_channels=HINT, head_channels=4)


def zero_convs(control: ControlModule) -> list[nn.Conv2d]:
    return [*control.encoder_out, control.middle_out, *control.decoder_out]


def randomised(control: ControlModule, seed: int = 2) -> ControlModule:
    """A copy of `control` whose zero convolutions hold random weights."""
    control = copy.deepcopy(control)
    generator = torch.Generator().manual_seed(seed)
    for conv in zero_convs(control):
        for p in conv.parameters():
            p.data = 0.2 * torch.randn(p.shape, generator=generator)
    return control


def inputs(size=(16, 16), batch=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(batch, 4, *size, generator=g)
    hint = torch.randn(batch, HINT, *size, generator=g)
    context = torch.randn(batch, 5, TINY_UNET["cross_attention_dim"], generator=g)
    return z_t, torch.tensor([17, 250])[:batch], hint, context


def sd_eps(unet, z_t, t, context):
    return unet(z_t, t, encoder_hidden_states=context).sample


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])  # (12, 20): not a multiple of 2^3
@torch.no_grad()
def test_fresh_control_is_plain_sd(unet, control, size):
    z_t, t, hint, context = inputs(size)
    expected = sd_eps(unet, z_t, t, context)
    got = controlled_noise_prediction(unet, control, z_t, t, context, hint)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    plain = controlled_noise_prediction(unet, None, z_t, t, context, None)
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-5)
    # a scalar timestep broadcasts over the batch as in diffusers
    scalar = controlled_noise_prediction(unet, control, z_t, t[1], context, hint)
    torch.testing.assert_close(scalar, sd_eps(unet, z_t, t[1], context), rtol=0, atol=1e-5)


def hooked_reference(unet, control, z_t, t, context, hint):
    """The controlled prediction computed independently: diffusers' own `unet(...)` forward with
    the control's projected features added by hooks (output hooks on the last module of every
    input block and on the middle block; pre-hooks on the output resnets adding to the channels
    of h, which come before the skip's in the concatenation)."""
    features, middle = control(z_t, t, hint, context)
    input_blocks = [unet.conv_in]
    for block in unet.down_blocks:
        input_blocks += getattr(block, "attentions", None) or block.resnets
        input_blocks += block.downsamplers or []
    output_blocks = [r for block in unet.up_blocks for r in block.resnets]

    def add_to_output(delta):
        def hook(module, args, output):
            return (
                (output[0] + delta, *output[1:]) if isinstance(output, tuple) else output + delta
            )

        return hook

    def add_to_h(delta):
        def hook(module, args):
            x, *rest = args
            skip = torch.zeros(x.shape[0], x.shape[1] - delta.shape[1], *x.shape[2:])
            return (x + torch.cat([delta, skip], dim=1), *rest)

        return hook

    handles = [
        m.register_forward_hook(add_to_output(conv(f)))
        for m, conv, f in zip(input_blocks, control.encoder_out, features, strict=True)
    ]
    handles.append(unet.mid_block.register_forward_hook(add_to_output(control.middle_out(middle))))
    handles += [
        m.register_forward_pre_hook(add_to_h(conv(f)))
        for m, conv, f in zip(output_blocks, control.decoder_out, features[::-1], strict=True)
    ]
    try:
        return sd_eps(unet, z_t, t, context)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
@torch.no_grad()
def test_injection_matches_hooked_diffusers_forward(unet, control, size):
    control = randomised(control)
    z_t, t, hint, context = inputs(size)
    expected = hooked_reference(unet, control, z_t, t, context, hint)
    got = controlled_noise_prediction(unet, control, z_t, t, context, hint)
    assert (expected - sd_eps(unet, z_t, t, context)).abs().mean() > 1e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_control_changes_prediction_through_hint(unet, control):
    control = randomised(control)
    z_t, t, hint, context = inputs()
    sd = sd_eps(unet, z_t, t, context)
    eps = controlled_noise_prediction(unet, control, z_t, t, context, hint)
    other_hint = controlled_noise_prediction(unet, control, z_t, t, context, hint.flip(0))
    assert (eps - sd).abs().mean() > 1e-2
    assert (eps - other_hint).abs().mean() > 1e-2
    # the control of sample 0 only depends on sample 0's hint
    torch.testing.assert_close(
        controlled_noise_prediction(unet, control, z_t[:1], t[:1], context[:1], hint[:1]),
        eps[:1],
        rtol=0,
        atol=1e-5,
    )
    # the injected features are scaled by `scale`: scale 0 is plain SD
    unscaled = controlled_noise_prediction(unet, control, z_t, t, context, hint, scale=0.0)
    torch.testing.assert_close(unscaled, sd, rtol=0, atol=1e-5)


def test_gradients_reach_control_only(unet, control):
    control = randomised(control)
    z_t, t, hint, context = inputs()
    z_t.requires_grad_(True)
    hint.requires_grad_(True)
    eps = controlled_noise_prediction(unet, control, z_t, t, context, hint)
    eps.square().mean().backward()
    grads = {name: p.grad for name, p in control.named_parameters()}
    assert all(g is not None for g in grads.values())
    nonzero = [name for name, g in grads.items() if g.abs().max() > 0]
    assert len(nonzero) >= 0.95 * len(grads), sorted(set(grads) - set(nonzero))
    assert all(p.grad is None for p in unet.parameters())
    assert z_t.grad.abs().max() > 0 and hint.grad.abs().max() > 0


def test_zero_convs_and_sd_channels(unet, control):
    assert (len(control.encoder_out), len(control.decoder_out)) == (12, 12)
    assert isinstance(control.middle_out, nn.Conv2d)
    for conv in zero_convs(control):
        assert conv.kernel_size == (1, 1)
        assert not conv.weight.any() and not conv.bias.any()
    # each SD output resnet reads h (decoder_out k) concatenated with skip k (encoder_out 11 - k)
    up_resnets = [r for block in unet.up_blocks for r in block.resnets]
    for k, resnet in enumerate(up_resnets):
        channels = control.decoder_out[k].out_channels + control.encoder_out[11 - k].out_channels
        assert channels == resnet.in_channels
        assert control.decoder_out[k].in_channels == control.encoder_out[11 - k].in_channels
    assert control.middle_out.out_channels == unet.mid_block.resnets[-1].out_channels
    # tiny widths 8/16/16/16 are all ≤ 32: one channel per GroupNorm group
    assert control.widths == [8, 16, 16, 16]
    for norm in control.modules():
        if isinstance(norm, nn.GroupNorm):
            assert norm.num_groups == norm.num_channels


def test_real_sd21_control_sizes():
    with torch.device("meta"):
        control = ControlModule(SD21_UNET)
        sd = UNet2DConditionModel(**SD21_UNET)
    assert control.widths == [64, 128, 256, 256]
    assert [c.in_channels for c in control.encoder_out] == [64] * 4 + [128] * 3 + [256] * 5
    assert [c.out_channels for c in control.encoder_out] == [320] * 4 + [640] * 3 + [1280] * 5
    assert [c.out_channels for c in control.decoder_out] == [1280] * 7 + [640] * 3 + [320] * 2
    assert (control.middle_out.in_channels, control.middle_out.out_channels) == (256, 1280)
    up_resnets = [r for block in sd.up_blocks for r in block.resnets]
    assert [r.in_channels for r in up_resnets] == [
        control.decoder_out[k].out_channels + control.encoder_out[11 - k].out_channels
        for k in range(12)
    ]
    # 16-channel heads; GroupNorm(32) everywhere; attention at SD's levels (not the last)
    heads = [
        [a.transformer_blocks[0].attn1.heads for a in block.attentions]
        for block in [*control.down_blocks[:3], control.mid_block]
    ]
    assert heads == [[4, 4], [8, 8], [16, 16], [16]]
    assert not hasattr(control.down_blocks[3], "attentions")
    assert {m.num_groups for m in control.modules() if isinstance(m, nn.GroupNorm)} == {32}
    assert control.conv_in.in_channels == 4 + 256
    assert control.time_embedding.linear_2.out_features == 1280
    # ControlNet-XS-sized (the count of this construction from diffusers' blocks)
    assert sum(p.numel() for p in control.parameters()) == 24_555_392


def test_control_widths_rounding():
    assert control_widths([320, 640, 1280, 1280], 0.2) == [64, 128, 256, 256]
    assert control_widths([320, 640, 1280, 1280], 0.1) == [32, 64, 128, 128]
    assert control_widths([32, 64, 64, 64], 0.2) == [8, 16, 16, 16]
    assert control_widths([48, 220], 0.1) == [8, 24]


@torch.no_grad()
def test_guidance(unet, control):
    control = randomised(control)
    z_t, t, hint, context = inputs()
    calls = []
    handle = unet.conv_in.register_forward_hook(lambda *_: calls.append(1))
    try:
        eps_theta = controlled_noise_prediction(unet, control, z_t, t, context, hint)
        eps_sd = sd_eps(unet, z_t, t, context)
        calls.clear()
        one = guided_noise_prediction(unet, control, z_t, t, context, hint, 1.0)
        assert len(calls) == 1
        zero = guided_noise_prediction(unet, control, z_t, t, context, hint, 0.0)
        assert len(calls) == 3
        half = guided_noise_prediction(unet, control, z_t, t, context, hint, 0.5)
    finally:
        handle.remove()
    torch.testing.assert_close(one, eps_theta, rtol=0, atol=0)
    torch.testing.assert_close(zero, eps_sd, rtol=0, atol=1e-6)
    torch.testing.assert_close(half, (eps_sd + eps_theta) / 2, rtol=0, atol=1e-6)


@torch.no_grad()
def test_bf16_autocast(unet, control):
    """bf16 for the frozen UNet only: the trainable control branch and zero convs stay fp32."""
    z_t, t, hint, context = inputs()
    dtypes = {}

    def record(key):
        def hook(_module, _inputs, output):
            dtypes.setdefault(key, output.dtype)

        return hook

    modules = {
        "control": control.conv_in,
        "zero_conv": control.encoder_out[0],
        "unet": unet.conv_in,
    }
    hooks = [module.register_forward_hook(record(key)) for key, module in modules.items()]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = sd_eps(unet, z_t, t, context)
            fresh = controlled_noise_prediction(unet, control, z_t, t, context, hint)
    finally:
        for hook in hooks:
            hook.remove()
    assert dtypes == {"unet": torch.bfloat16, "control": torch.float32, "zero_conv": torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = controlled_noise_prediction(unet, randomised(control), z_t, t, context, hint)
    torch.testing.assert_close(fresh, expected, rtol=0, atol=0)
    reference = controlled_noise_prediction(unet, randomised(control), z_t, t, context, hint)
    assert eps.dtype == torch.bfloat16
    assert (eps.float() - reference).abs().mean() < 0.05 * reference.abs().mean()

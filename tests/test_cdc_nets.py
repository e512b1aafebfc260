"""CDC networks: U-Net shapes and conditioning, gradients, checkpointing, exact entropy coding."""

from __future__ import annotations

import math

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.base import get_scale_table

from modules.nets import CDCCompressor, ConditionalUNet
from modules.nets.cdc_unet import ResnetBlock

TINY_CONTEXT = (8, 8, 16, 24)


def tiny_unet(seed: int = 0, **kwargs) -> ConditionalUNet:
    torch.manual_seed(seed)
    return ConditionalUNet(dim=8, context_channels=TINY_CONTEXT, **kwargs)


def tiny_compressor(seed: int = 0, **kwargs) -> CDCCompressor:
    torch.manual_seed(seed)
    return CDCCompressor(dim=8, **{"out_channels": 8, **kwargs})


def random_context(batch: int, height: int, width: int) -> list[torch.Tensor]:
    return [torch.randn(batch, c, height >> i, width >> i) for i, c in enumerate(TINY_CONTEXT)]


def updated(model: CDCCompressor) -> CDCCompressor:
    """Eval mode with the entropy coders' tables built, as CompressionModel.update does."""
    model.eval()
    for module in model.modules():
        if isinstance(module, EntropyBottleneck):
            module.update(force=True)
        elif isinstance(module, GaussianConditional):
            module.update_scale_table(get_scale_table(0.1), force=True)
    return model


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_unet_output_shape():
    unet = tiny_unet()
    x = torch.randn(2, 3, 64, 96)
    out = unet(x, torch.rand(2), random_context(2, 64, 96))
    assert out.shape == x.shape


def test_unet_rejects_bad_inputs():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="multiples of 32"):
        unet(torch.randn(1, 3, 48, 64), torch.rand(1), random_context(1, 48, 64))
    with pytest.raises(ValueError, match="context maps"):
        unet(torch.randn(1, 3, 64, 64), torch.rand(1), random_context(1, 64, 64)[:3])


def test_context_is_concatenated_at_the_first_four_levels():
    unet = tiny_unet().eval()
    widths = [3, *(8 * m for m in (1, 2, 3, 4, 5, 6))]
    for i, level in enumerate(unet.downs):
        extra = TINY_CONTEXT[i] if i < len(TINY_CONTEXT) else 0
        assert level.res1.block1[0].in_channels == widths[i] + extra
    assert unet.downs[0].res1.block1[0].kernel_size == (7, 7)

    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    context = random_context(1, 32, 32)
    with torch.no_grad():
        reference = unet(x, t, context)
        for i in range(len(context)):
            changed = list(context)
            changed[i] = torch.randn_like(context[i])
            assert not torch.allclose(unet(x, t, changed), reference), f"level {i} ignored"
        assert not torch.allclose(unet(x, 1 - t, context), reference), "time ignored"


def test_default_parameter_counts():
    unet, compressor = ConditionalUNet(), CDCCompressor()
    n_unet, n_compressor = n_params(unet), n_params(compressor)
    print(f"ConditionalUNet: {n_unet:,} parameters; CDCCompressor: {n_compressor:,}")
    assert 35e6 < n_unet < 45e6
    assert 13e6 < n_compressor < 15e6
    assert compressor.context_channels == unet.context_channels == (64, 64, 128, 192)
    assert CDCCompressor(out_channels=3).context_channels == (3, 64, 128, 192)


def test_every_parameter_gets_a_gradient():
    compressor, unet = tiny_compressor(), tiny_unet()
    compressor.train(), unet.train()
    with torch.no_grad():  # an untrained h_a gives |z| << 0.5, hence ẑ = 0 and no h_s gradient
        compressor.latent_codec.hyper.h_a[-1].weight.mul_(100)
    x = 2 * torch.rand(1, 3, 64, 64) - 1
    out = compressor(x)
    x_t = 0.7 * x + 0.7 * torch.randn_like(x)
    distortion = (unet(x_t, torch.rand(1), out["context"]) - x).square().mean()
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    (distortion + bits / (64 * 64)).backward()
    for name, p in [*compressor.named_parameters(), *unet.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        # the quantiles only learn from CompressAI's aux loss
        if not name.endswith("quantiles"):
            assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_matches_plain_backward():
    plain = tiny_unet(0).train()
    checkpointed = tiny_unet(1, gradient_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    checkpointed.mid_res1.register_forward_pre_hook(lambda *_: calls.append(1))

    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    context = random_context(2, 32, 32)
    outputs = []
    for model in (plain, checkpointed):
        out = model(x, t, context)
        out.square().mean().backward()
        outputs.append(out.detach())
    assert len(calls) == 2, "the checkpointed block was not recomputed in backward"
    torch.testing.assert_close(outputs[1], outputs[0])
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_compressor_shapes():
    compressor = tiny_compressor()
    out = compressor(torch.rand(2, 3, 128, 192) * 2 - 1)
    assert out["y_hat"].shape == (2, 32, 8, 12)
    assert out["likelihoods"]["y"].shape == (2, 32, 8, 12)
    assert out["likelihoods"]["z"].shape == (2, 32, 2, 3)
    assert compressor.context_channels == TINY_CONTEXT
    assert [tuple(m.shape) for m in out["context"]] == [
        (2, c, 128 >> i, 192 >> i) for i, c in enumerate(TINY_CONTEXT)
    ]
    eps_compressor = tiny_compressor(out_channels=3)
    assert eps_compressor.context_channels == (3, 8, 16, 24)
    assert eps_compressor(torch.rand(1, 3, 64, 64))["context"][0].shape == (1, 3, 64, 64)


def test_time_less_resnet_block():
    block = ResnetBlock(4, 6)
    assert block.time_mlp is None
    assert block(torch.randn(1, 4, 8, 8)).shape == (1, 6, 8, 8)


def test_entropy_model_configuration():
    codec = tiny_compressor().latent_codec
    assert codec.hyper.entropy_bottleneck.filters == (3, 3, 3)
    assert codec.y.gaussian_conditional.lower_bound_scale.bound.item() == pytest.approx(0.1)


def test_decompressed_context_equals_forward_context_bit_exactly():
    encoder = updated(tiny_compressor(0))
    decoder = tiny_compressor(1)
    decoder.load_state_dict(encoder.state_dict())
    updated(decoder)
    x = 2 * torch.rand(2, 3, 128, 64) - 1
    with torch.no_grad():
        expected = encoder(x)["context"]
        coded = encoder.compress(x)
        decoded = decoder.decompress(coded["strings"], coded["shape"])["context"]
    y_strings, z_strings = coded["strings"]
    assert len(y_strings) == len(z_strings) == 2
    bpp = 8 * sum(len(s) for s in [*y_strings, *z_strings]) / (2 * 128 * 64)
    assert 0 < bpp < math.inf
    assert len(decoded) == len(expected) == len(coded["context"])
    for got, want, sent in zip(decoded, expected, coded["context"], strict=True):
        assert torch.equal(got, want)
        assert torch.equal(sent, want)

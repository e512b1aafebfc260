"""RDEIC compression module: CVQ-VAE codebook, index coding, shapes, exact round trips."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from compressai.layers import CheckerboardMaskedConv2d

from modules.entropy.bitstream import BitstreamError
from modules.entropy.vector_quantizer import RANS_PRECISION, VectorQuantizer
from modules.nets.rdeic_compressor import RDEICCompressor

TINY = {
    "feature_channels": 16,
    "channels": 32,
    "groups": (4, 4, 8, 16),
    "num_codes": 64,
    "hint_channels": 16,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and do not oversubscribe a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same data, whatever ran before it."""
    torch.manual_seed(0)


def tiny_compressor(seed: int = 0, **kwargs) -> RDEICCompressor:
    torch.manual_seed(seed)
    return RDEICCompressor(**{**TINY, **kwargs})


def trained(model: RDEICCompressor, feature: torch.Tensor, steps: int = 5) -> RDEICCompressor:
    """A few training-mode passes (codebook re-initialisation and usage statistics), then
    eval mode with every coder table built."""
    model.train()
    for _ in range(steps):
        model(feature)
    model.eval()
    model.latent_codec.gaussian_conditional.update()
    model.vq.update()
    return model


def random_vq(num_codes: int = 16, dim: int = 4, seed: int = 0, **kwargs) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(num_codes, dim, **kwargs)
    with torch.no_grad():
        vq.codebook.weight.normal_()
    return vq


def brute_force_indices(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    features = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    distances = ((features[:, None, :] - codebook.double()[None]) ** 2).sum(-1)
    return distances.argmin(1).view(z.shape[0], *z.shape[2:])


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------- VQ


def test_nearest_code_matches_brute_force():
    vq = random_vq(num_codes=64, dim=8).eval()
    z = torch.randn(3, 8, 5, 7)
    out = vq(z)
    expected = brute_force_indices(z, vq.codebook.weight)
    assert out["indices"].shape == (3, 5, 7) and out["indices"].dtype == torch.long
    assert torch.equal(out["indices"], expected)
    assert torch.equal(vq.nearest(z), expected)
    # z_q is exactly the looked-up code, contiguous, fp32 even for a bf16 input
    assert torch.equal(out["z_q"], vq.lookup(expected))
    assert torch.equal(vq.lookup(expected)[1, :, 2, 3], vq.codebook.weight[expected[1, 2, 3]])
    assert out["z_q"].is_contiguous() and vq(z.bfloat16())["z_q"].dtype == torch.float32


def test_straight_through_gradient_reaches_the_input_only():
    vq = random_vq().eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    (vq(z)["z_q"] * g).sum().backward()
    assert torch.equal(z.grad, g)
    assert vq.codebook.weight.grad is None or not vq.codebook.weight.grad.any()


@pytest.mark.parametrize("training", [False, True])
def test_codebook_loss_matches_formula(training):
    vq = random_vq(beta=0.25, contrastive=False).train(training)
    codebook = vq.codebook.weight.detach().clone()
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    out = vq(z)
    e = codebook[brute_force_indices(z, codebook)].permute(0, 3, 1, 2)
    mse = ((e - z.detach()) ** 2).mean()
    torch.testing.assert_close(out["loss"], 1.25 * mse)
    out["loss"].backward()
    # only β·‖sg(e) − z‖² reaches z; ‖e − sg(z)‖² reaches the codebook
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - e) / z.numel())
    grad_e = torch.zeros_like(codebook).index_add_(
        0,
        brute_force_indices(z, codebook).flatten(),
        (2 * (e - z.detach()) / z.numel()).permute(0, 2, 3, 1).reshape(-1, 4),
    )
    torch.testing.assert_close(vq.codebook.weight.grad, grad_e)


def reference_contrastive_loss(features: torch.Tensor, codebook: torch.Tensor, t: float):
    """Per code, in a loop: the mean similarity (−squared L2) to its ⌊N/K⌋ (≥ 1) closest
    features against the similarities to the ⌊N/2⌋ farthest, as cross-entropy."""
    n, k = features.shape[0], codebook.shape[0]
    losses = []
    for i in range(k):
        similarity = -((features - codebook[i]) ** 2).sum(1)
        descending = similarity.sort(descending=True).values
        positive = descending[: max(1, n // k)].mean()
        negatives = descending.flip(0)[: n // 2]
        logits = torch.cat((positive[None], negatives)) / t
        losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean()


def test_contrastive_term_matches_reference_and_moves_only_the_codebook():
    plain = random_vq(num_codes=8, dim=4, contrastive=False).train()
    vq = random_vq(num_codes=8, dim=4, contrastive=True, temperature=0.07).train()
    codebook = vq.codebook.weight.detach().clone()
    z = torch.randn(2, 4, 4, 5)
    with_term, without = vq(z.clone().requires_grad_()), plain(z)
    features = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = reference_contrastive_loss(features.double(), codebook.double(), 0.07)
    torch.testing.assert_close(with_term["loss"] - without["loss"], expected.float())

    # at 0.07 the softmax saturates (zero gradient) for far codes; a mild temperature does not
    z_grad = z.clone().requires_grad_()
    vq2 = random_vq(num_codes=8, dim=4, contrastive=True, temperature=5.0).train()
    out = vq2(z_grad)
    out["loss"].backward()
    e = codebook[brute_force_indices(z, codebook)].permute(0, 3, 1, 2)
    torch.testing.assert_close(z_grad.grad, 0.25 * 2 * (z - e) / z.numel())
    # codes no feature picked get no codebook-loss gradient, but the contrastive one
    unused = torch.ones(8, dtype=torch.bool)
    unused[out["indices"].flatten()] = False
    assert unused.any() and vq2.codebook.weight.grad[unused].any()


def test_usage_ema_updates_only_in_training_mode():
    vq = random_vq(num_codes=16, dim=4)
    z = torch.randn(2, 4, 3, 3)
    vq.eval()
    before = vq.codebook.weight.detach().clone()
    vq(z)
    assert not vq.usage.any() and torch.equal(vq.codebook.weight, before)

    vq.usage.fill_(0.5)
    vq.train()
    indices = brute_force_indices(z, vq.codebook.weight)
    vq(z)
    counts = torch.bincount(indices.flatten(), minlength=16).float()
    torch.testing.assert_close(vq.usage, 0.99 * 0.5 + 0.01 * counts / 18)


def test_dead_code_reinitialisation_moves_unused_codes_only():
    vq = VectorQuantizer(num_codes=4, dim=2, contrastive=False).train()
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10, 10], [10, -10]]))
        vq.usage.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    old = vq.codebook.weight.detach().clone()
    features = torch.tensor([[0.1, -0.2], [0.3, 0.1], [-0.2, 0.2], [2.0, 3.0], [-1.0, 2.5]])
    z = features.t().reshape(1, 2, 1, 5)
    out = vq(z)
    assert torch.equal(out["indices"], torch.zeros(1, 1, 5, dtype=torch.long))

    usage = torch.tensor([0.99 + 0.01, 0.0, 0.0, 0.0])
    rate = torch.exp(-10 * 4 * usage / 0.01 - 1e-3)
    closest = features[((features[:, None] - old[None]) ** 2).sum(-1).argmin(0)]
    torch.testing.assert_close(vq.usage, usage)
    torch.testing.assert_close(
        vq.codebook.weight, old * (1 - rate[:, None]) + closest * rate[:, None]
    )
    # the used code stays (exp(−4000) = 0); unused ones land within 0.1 % of a feature
    assert torch.equal(vq.codebook.weight[0], old[0])
    assert torch.equal(closest[1], features[3]) and torch.equal(closest[2], features[4])
    for i in (1, 2, 3):
        gap = (vq.codebook.weight[i] - closest[i]).norm() / (old[i] - closest[i]).norm()
        assert 0 < gap < 1.1e-3


# ---------------------------------------------------------------------------- index coding


def test_uniform_prior_is_a_fixed_length_code():
    vq = VectorQuantizer(num_codes=100, dim=4).eval()
    indices = torch.randint(0, 100, (2, 3, 5))
    indices[0, 0, 0], indices[1, 2, 4] = 0, 99
    strings = vq.compress(indices)
    assert vq.index_bits == 7 and len(strings) == 2
    for row, string in zip(indices.flatten(1).tolist(), strings, strict=True):
        bits = "".join(f"{i:07b}" for i in row)  # 105 bits, MSB first, zero padded
        assert string == int(bits + "0" * 7, 2).to_bytes(14, "big")
    assert torch.equal(vq.bits(indices), torch.tensor([105.0, 105.0]))
    assert torch.equal(vq.decompress(strings, (3, 5)), indices)

    # the official setting: 14 bits per index, one index per 64×64 pixels
    full = VectorQuantizer(num_codes=16384, dim=4)
    indices = torch.randint(0, 16384, (1, 8, 8))
    assert full.index_bits == 14 and len(full.compress(indices)[0]) == 64 * 14 // 8
    assert math.isclose(float(full.bits(indices)[0]) / 512**2, 0.003418, rel_tol=1e-3)
    assert torch.equal(full.decompress(full.compress(indices), (8, 8)), indices)


def test_uniform_prior_rejects_invalid_strings():
    vq = VectorQuantizer(num_codes=100, dim=4)
    (string,) = vq.compress(torch.randint(0, 100, (1, 3, 5)))
    for bad in (string[:-1], string + b"\0", b"", string[:-1] + bytes([string[-1] | 1])):
        with pytest.raises(BitstreamError):
            vq.decompress([bad], (3, 5))
    with pytest.raises(BitstreamError, match="out of range"):
        vq.decompress([int("1" * 105 + "0" * 7, 2).to_bytes(14, "big")], (3, 5))  # 127


def clustered_training(vq: VectorQuantizer, steps: int = 30) -> None:
    """Training-mode passes on features around 4 centres: skewed code usage."""
    torch.manual_seed(1)
    centres = torch.randn(4, vq.dim) * 3
    vq.train()
    for _ in range(steps):
        labels = torch.randint(0, 4, (64,))
        features = centres[labels] + 0.05 * torch.randn(64, vq.dim)
        vq(features.t().reshape(1, vq.dim, 8, 8))
    vq.eval()


def test_usage_prior_codes_skewed_indices_cheaper_than_uniform():
    vq = VectorQuantizer(num_codes=64, dim=8, prior="usage")
    # before any statistics the usage prior is uniform: 6 bits per index
    indices = torch.randint(0, 64, (2, 4, 4))
    torch.testing.assert_close(vq.bits(indices), torch.full((2,), 96.0), rtol=1e-3, atol=0)

    clustered_training(vq)
    vq.update()
    probabilities = (vq.cdf[1:-1] - vq.cdf[:-2]).double() / 2**RANS_PRECISION
    assert (probabilities > 0).all() and vq.cdf[-1] == 2**RANS_PRECISION
    torch.manual_seed(2)
    indices = torch.multinomial(probabilities.float(), 2 * 32 * 32, True).view(2, 32, 32)
    bits = vq.bits(indices)
    assert (bits < 0.75 * 6 * 32 * 32).all()
    strings = vq.compress(indices)
    for b, string in zip(bits.tolist(), strings, strict=True):
        assert b <= 8 * len(string) <= b + 96  # rANS: the ideal cost plus its final state
        assert len(string) < 6 * 32 * 32 // 8  # bytes of the uniform prior's string
    assert torch.equal(vq.decompress(strings, (32, 32)), indices)

    # the prior is a buffer: a decoder loaded from the state dict decodes the same strings
    decoder = VectorQuantizer(num_codes=64, dim=8, prior="usage")
    decoder.load_state_dict(vq.state_dict())
    assert torch.equal(decoder.decompress(strings, (32, 32)), indices)


def test_usage_prior_table_beats_compressai_quantisation():
    """Our integer frequencies vs CompressAI's pmf_to_quantized_cdf on the same prior."""
    from compressai._CXX import pmf_to_quantized_cdf

    vq = VectorQuantizer(num_codes=16384, dim=2, prior="usage")
    frequencies = (vq.cdf[1:-1] - vq.cdf[:-2]).double()
    assert (16 - torch.log2(frequencies)).mean() < 14.0001  # uniform: 14 bits per index

    usage = 1 / torch.arange(1, 16385).double() ** 1.1
    vq.usage.copy_(usage)
    vq.update()
    pmf = usage / usage.sum()
    ours = -(pmf * torch.log2((vq.cdf[1:-1] - vq.cdf[:-2]).double() / 2**16)).sum()
    cdf = torch.tensor(pmf_to_quantized_cdf([*pmf.clamp_min(2**-16).tolist(), 2**-16], 16))
    theirs = -(pmf * torch.log2((cdf[1:-1] - cdf[:-2]).double() / 2**16)).sum()
    entropy = -(pmf * torch.log2(pmf)).sum()
    # every code keeps one count of 2^16 (a quarter of the mass for 16384 codes): small cost
    assert entropy <= ours < entropy + 0.2 and ours < theirs - 0.5


def test_usage_prior_single_index_and_invalid_strings():
    vq = VectorQuantizer(num_codes=64, dim=8, prior="usage")
    clustered_training(vq, steps=5)
    vq.update()
    one = torch.tensor([[[37]]])
    assert torch.equal(vq.decompress(vq.compress(one), (1, 1)), one)

    indices = torch.randint(0, 64, (1, 4, 4))
    (string,) = vq.compress(indices)
    flipped = bytearray(string)
    flipped[len(string) // 2] ^= 0x5A
    for bad in (string[:-4], string[:-1], string + b"\0" * 4, bytes(flipped), b""):
        with pytest.raises(BitstreamError):
            vq.decompress([bad], (4, 4))

    # arbitrary input never crashes: an error, or a string that is the code of its decoding
    rng = np.random.default_rng(0)
    for length in range(0, 68, 4):
        for _ in range(20):
            garbage = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
            try:
                decoded = vq.decompress([garbage], (4, 4))
            except BitstreamError:
                continue
            assert vq.compress(decoded) == [garbage]


# ---------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    vq = random_vq(num_codes=16, dim=4, seed=3).train()
    z = _ddp_features()[:, :, :, :6] if rank == 0 else _ddp_features()[:, :, :, 6:]
    vq(z)
    torch.save(
        {"codebook": vq.codebook.weight.detach(), "usage": vq.usage},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def _ddp_features() -> torch.Tensor:
    return torch.randn(1, 4, 1, 11, generator=torch.Generator().manual_seed(5)) * 2


@pytest.mark.slow
def test_codebook_statistics_are_global_under_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = random_vq(num_codes=16, dim=4, seed=3).train()
    single(_ddp_features())  # one process seeing both ranks' features
    for state in ranks:
        assert torch.equal(state["codebook"], ranks[0]["codebook"])
        torch.testing.assert_close(state["codebook"], single.codebook.weight.detach())
        torch.testing.assert_close(state["usage"], single.usage)


# ---------------------------------------------------------------------------- compressor


def test_shapes():
    model = tiny_compressor()
    feature = torch.randn(2, 16, 16, 16)
    y = model.g_a(feature)
    assert y.shape == (2, 32, 8, 8) and model.h_a(y).shape == (2, 32, 2, 2)
    out = model(feature)
    assert out["hint"].shape == (2, 16, 16, 16)
    assert out["z_c"].shape == (2, 4, 16, 16)
    assert out["likelihoods"]["y"].shape == (2, 32, 8, 8)
    assert out["indices"].shape == (2, 2, 2) and out["vq_loss"].dim() == 0
    assert out["likelihoods"]["z"].shape == (2, 1, 2, 2)
    assert -torch.log2(out["likelihoods"]["z"]).sum().item() == 2 * 4 * 6  # 6 bits per index
    assert model.latent_codec.anchor_parity == "odd"
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 16, 12, 16))


@pytest.mark.parametrize("prior", ["uniform", "usage"])
def test_decompress_equals_eval_forward_bit_for_bit(prior):
    feature = torch.randn(2, 16, 16, 24)
    model = trained(tiny_compressor(vq_prior=prior), feature)
    with torch.no_grad():
        forward = model(feature)
        coded = model.compress(feature)
        decoded = model.decompress(coded["strings"], coded["shape"])
    y_strings, z_strings = coded["strings"]
    assert len(y_strings) == len(z_strings) == 2 and coded["shape"] == (2, 3)
    assert torch.equal(model.vq.decompress(z_strings, (2, 3)), forward["indices"])
    for key in ("hint", "z_c"):
        assert torch.equal(decoded[key], forward[key]), key
        assert torch.equal(coded[key], forward[key]), key
    if prior == "uniform":
        assert [len(s) for s in z_strings] == [math.ceil(6 * 6 / 8)] * 2
        assert -torch.log2(forward["likelihoods"]["z"]).sum().item() == 2 * 6 * 6


def test_usage_prior_spends_fewer_bits_after_skewed_training():
    feature = torch.randn(2, 16, 16, 16)
    model = trained(tiny_compressor(vq_prior="usage"), feature, steps=20)
    usage = model.vq.usage / model.vq.usage.sum()
    # 8 positions per batch: far from uniform over the 64 codes (6 bits)
    assert -(usage * torch.log2(usage.clamp_min(1e-12))).sum() < 4
    with torch.no_grad():
        out = model(feature)
    assert -torch.log2(out["likelihoods"]["z"]).sum() < 0.7 * 2 * 4 * 6


@pytest.mark.parametrize("prior", ["uniform", "usage"])
def test_truncated_or_corrupted_z_string_raises(prior):
    feature = torch.randn(1, 16, 16, 16)
    model = trained(tiny_compressor(vq_prior=prior), feature, steps=2)
    coded = model.compress(feature)
    (y_string,), (z_string,) = coded["strings"]
    flipped = bytearray(z_string)
    flipped[0] ^= 0xFF
    bad_strings = [z_string[:-1], z_string + b"\0", b""]
    if prior == "usage":  # every fixed-length string of 24 bits is a valid code of 4 indices
        bad_strings.append(bytes(flipped))
    for bad in bad_strings:
        with pytest.raises(BitstreamError):
            model.decompress([[y_string], [bad]], coded["shape"])


def test_gradients_reach_every_trainable_parameter():
    model = tiny_compressor().train()
    out = model(torch.randn(2, 16, 16, 16))
    rate = -torch.log2(out["likelihoods"]["y"]).sum() / (2 * 128 * 128)
    loss = out["hint"].square().mean() + out["z_c"].square().mean() + rate + out["vq_loss"]
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing


def test_plain_spatial_context_equals_checkerboard_masked_conv():
    model = tiny_compressor().eval()
    codec = model.latent_codec
    y, params = torch.randn(1, 32, 8, 8), torch.randn(1, 64, 8, 8)
    reference = codec(y, params)
    masked = []
    for conv in codec.spatial_context:
        m = CheckerboardMaskedConv2d(conv.in_channels, conv.out_channels, 5, padding=2)
        result = m.load_state_dict(conv.state_dict(), strict=False)
        assert result.missing_keys == ["mask"] and not result.unexpected_keys  # only the mask
        masked.append(m)
    codec.spatial_context = torch.nn.ModuleList(masked)
    out = codec(y, params)
    torch.testing.assert_close(out["y_hat"], reference["y_hat"], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out["likelihoods"]["y"], reference["likelihoods"]["y"], rtol=1e-5, atol=1e-7
    )


def test_full_size_parameter_counts_match_closed_form():
    def conv(k: int, i: int, o: int) -> int:
        return k * k * i * o + o

    def rb(i: int, o: int) -> int:
        return conv(3, i, o) + conv(3, o, o) + (conv(1, i, o) if i != o else 0)

    def rbs(i: int, o: int) -> int:
        return conv(3, i, o) + conv(3, o, o) + conv(1, i, o)

    def rbu(i: int, o: int) -> int:
        return 2 * conv(1, i, 4 * o) + conv(3, o, o)

    model = RDEICCompressor()
    groups = (8, 8, 8, 8, 16, 16, 32, 32, 64, 64)
    channel_ctx = sum(
        conv(5, sum(groups[:k]), 224) + conv(5, 224, 128) + conv(5, 128, 2 * groups[k])
        for k in range(1, 10)
    )
    expected = {
        "vq": (16384 * 256, 4.2),
        "g_a": (rb(512, 256) + 6 * rb(256, 256) + rbs(256, 256) + conv(3, 256, 256), 10.8),
        "h_a": (2 * rb(256, 256) + 2 * rbs(256, 256), 4.9),
        "h_s": (2 * rbu(256, 256) + rb(256, 384) + rb(384, 512), 8.9),
        "g_s": (conv(3, 256, 256) + 7 * rb(256, 256) + rbu(256, 256), 10.0),
    }
    for name, (count, reference_millions) in expected.items():
        assert n_params(getattr(model, name)) == count, name
        assert abs(count / 1e6 - reference_millions) < 0.06, name
    assert n_params(model.latent_codec.channel_context) == channel_ctx
    assert abs(channel_ctx / 1e6 - 11.5) < 0.06
    assert n_params(model.out) == conv(3, 256, 4)


def test_official_context_has_separate_anchor_networks():
    """context="official": the anchors have their own networks reading [channel ctx,] hyper
    (1.40 M parameters at the paper's widths, against 0.74 M for the shared networks), so the
    non-anchor network does not touch the anchors' parameters."""

    def aggregation(i: int, o: int) -> int:
        return (
            i * (5 * o // 3)
            + 5 * o // 3
            + (5 * o // 3) * (4 * o // 3)
            + 4 * o // 3
            + (4 * o // 3) * o
            + o
        )

    groups, c = (8, 8, 8, 8, 16, 16, 32, 32, 64, 64), 256
    shared = sum(aggregation(2 * g + 2 * g * (k > 0) + 2 * c, 2 * g) for k, g in enumerate(groups))
    anchors = sum(aggregation(2 * g * (k > 0) + 2 * c, 2 * g) for k, g in enumerate(groups))
    official = RDEICCompressor(context="official", num_codes=16).latent_codec
    assert n_params(official.param_aggregation) == shared
    assert n_params(official.anchor_param_aggregation) == anchors
    assert round((shared + anchors) / 1e6, 2) == 1.40 and round(shared / 1e6, 2) == 0.74

    feature = torch.randn(1, 16, 16, 16)
    group0 = TINY["groups"][0]
    for context, anchors_move in (("shared", True), ("official", False)):
        model = trained(tiny_compressor(context=context), feature)
        with torch.no_grad():
            y = model.g_a(feature)
            params = model._hyper_params(model.vq.lookup(model.vq.nearest(model.h_a(y))))
            before = model.latent_codec(y, params)["likelihoods"]["y"][:, :group0]
            model.latent_codec.param_aggregation[0][0].bias.add_(1.0)  # the non-anchor network
            after = model.latent_codec(y, params)["likelihoods"]["y"][:, :group0]
        anchor, non_anchor = model.latent_codec._split(after - before)
        assert (anchor.abs().max() > 0) == anchors_move, context
        assert non_anchor.abs().max() > 0
    with torch.no_grad():
        coded = model.compress(feature)
        decoded = model.decompress(coded["strings"], coded["shape"])
    assert torch.equal(decoded["z_c"], model(feature)["z_c"])
    with pytest.raises(ValueError, match="context must be one of"):
        tiny_compressor(context="separate")


def test_one_position_hyper_latent_decodes_bit_for_bit():
    """A 1×1 hyper-latent (a 64×64 image): the decoder's code lookup and the encoder's forward
    feed h_s tensors of the same strides, hence the same convolution kernels."""
    model = trained(tiny_compressor(), torch.randn(2, 16, 16, 16)).eval()
    feature = 10 * torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        coded = model.compress(feature)
        decoded = model.decompress(coded["strings"], coded["shape"])
        forward = model(feature)
    assert coded["shape"] == (1, 1)
    assert torch.equal(decoded["hint"], forward["hint"])


def test_resampling_blocks_use_the_official_activation_slopes():
    """RBS and RBU apply LeakyReLU(0.01) then LeakyReLU(0.1) (official `res_blk.py`); written
    out here with F.conv2d / F.leaky_relu, independently of the modules' own Sequential."""
    import torch.nn.functional as F

    from modules.nets.rdeic_compressor import StridedResidualBlock, SubpelResidualBlock

    x = torch.randn(2, 8, 8, 8)
    rbs = StridedResidualBlock(8, 6)
    c1, c2 = rbs.body[0], rbs.body[2]
    h = F.leaky_relu(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1), 0.01)
    h = F.leaky_relu(F.conv2d(h, c2.weight, c2.bias, padding=1), 0.1)
    skip = F.conv2d(x, rbs.skip.weight, rbs.skip.bias, stride=2)
    torch.testing.assert_close(rbs(x), h + skip, rtol=0, atol=1e-6)

    rbu = SubpelResidualBlock(8, 6)
    c1, c2 = rbu.body[0], rbu.body[3]
    h = F.leaky_relu(F.pixel_shuffle(F.conv2d(x, c1.weight, c1.bias), 2), 0.01)
    h = F.leaky_relu(F.conv2d(h, c2.weight, c2.bias, padding=1), 0.1)
    skip = F.pixel_shuffle(F.conv2d(x, rbu.skip[0].weight, rbu.skip[0].bias), 2)
    torch.testing.assert_close(rbu(x), h + skip, rtol=0, atol=1e-6)

    # the compressor has six of them (g_a 1 RBS, h_a 2 RBS, g_s 1 RBU, h_s 2 RBU)
    model = tiny_compressor()
    blocks = [
        m for m in model.modules() if isinstance(m, StridedResidualBlock | SubpelResidualBlock)
    ]
    assert len(blocks) == 6

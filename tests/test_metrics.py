"""Per-image metrics: known values, independent implementations, local weights, labelling."""

from __future__ import annotations

import math
import re

import numpy as np
import piq
import pytest
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from modules.metrics import (
    DEFAULT_METRICS,
    MetricSuite,
    WeightsNotFoundError,
    gmsd,
    ms_ssim,
    psnr,
    ssim,
    vif,
)


def photo(size: int = 256) -> torch.Tensor:
    """A crop of scikit-image's astronaut photo as a 1×3×size×size float image of 0..255."""
    crop = skimage.data.astronaut()[100 : 100 + size, 100 : 100 + size]
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float()


def noisy(image: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """`image` plus seeded Gaussian noise of std `sigma`, rounded to 8 bits."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    return (image + sigma * noise).round().clamp(0, 255)


@pytest.fixture(scope="module")
def untrained_suite() -> MetricSuite:
    return MetricSuite(fid=False, pretrained=False)


def test_identical_images_have_the_ideal_values(untrained_suite):
    image = photo(192)
    values = untrained_suite(image, image.clone())
    assert list(values) == list(DEFAULT_METRICS)
    assert values["psnr"] == math.inf
    assert values["ssim"] == pytest.approx(1, abs=1e-6)
    assert values["ms_ssim"] == pytest.approx(1, abs=1e-6)
    assert values["lpips_alex"] == pytest.approx(0, abs=1e-6)
    assert values["lpips_vgg"] == pytest.approx(0, abs=1e-6)
    assert values["dists"] == pytest.approx(0, abs=1e-5)
    assert values["gmsd"] == 0
    assert values["vif"] == pytest.approx(1, abs=1e-6)


def test_noisy_image_against_independent_implementations():
    image = photo(192)
    degraded = noisy(image, 10)
    mse = np.mean((degraded.numpy().astype(np.float64) - image.numpy()) ** 2)
    assert psnr(degraded, image) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)
    as_hwc = [x[0].permute(1, 2, 0).numpy() for x in (degraded, image)]
    assert psnr(degraded, image) == pytest.approx(
        peak_signal_noise_ratio(*as_hwc[::-1], data_range=255)
    )
    reference_ssim = float(piq.ssim(degraded, image, data_range=255.0, downsample=False))
    assert ssim(degraded, image) == pytest.approx(reference_ssim, abs=1e-3)
    skimage_ssim = structural_similarity(
        *as_hwc,
        data_range=255,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(degraded, image) == pytest.approx(skimage_ssim, abs=1e-3)
    reference_ms_ssim = float(piq.multi_scale_ssim(degraded, image, data_range=255.0))
    assert ms_ssim(degraded, image) == pytest.approx(reference_ms_ssim, abs=1e-3)
    assert 0.5 < ssim(degraded, image) < ms_ssim(degraded, image) < 1


def jpeg_pair(name: str, quality: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """(JPEG-compressed copy, original) of a sample photo as 1×3×H×W float images of 0..255."""
    import io

    from PIL import Image

    original = getattr(skimage.data, name)()
    buffer = io.BytesIO()
    Image.fromarray(original).save(buffer, format="JPEG", quality=quality)
    decoded = np.array(Image.open(buffer).convert("RGB"))
    return tuple(torch.from_numpy(a).permute(2, 0, 1)[None].float() for a in (decoded, original))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_ms_ssim_matches_pytorch_msssim_on_the_sample_photos(name):
    """CompressAI's evaluation computes MS-SSIM with pytorch_msssim; here in float64 as the
    reference. torchmetrics' (padded borders) was off by up to 3e-3 on these sizes."""
    import pytorch_msssim

    decoded, original = jpeg_pair(name)  # 512², 600×400, 451×300, 640×427
    reference = pytorch_msssim.ms_ssim(decoded.double(), original.double(), data_range=255)
    assert ms_ssim(decoded, original) == pytest.approx(float(reference), abs=1e-5)


def test_gmsd_and_vif_degrade_with_more_noise():
    image = photo(128)
    mild, strong = noisy(image, 5), noisy(image, 20)
    assert 0 < gmsd(mild, image) < gmsd(strong, image)
    assert 1 > vif(mild, image) > vif(strong, image) > 0
    assert psnr(mild, image) > psnr(strong, image)
    assert ssim(mild, image) > ssim(strong, image)


def test_images_too_small_give_nan_with_a_warning(untrained_suite):
    image = photo(64)[..., :40, :]
    degraded = noisy(image, 10)
    with pytest.warns(UserWarning, match="ms_ssim needs both sides >= 161"):
        assert math.isnan(ms_ssim(degraded, image))
    with pytest.warns(UserWarning, match="vif needs both sides >= 41"):
        assert math.isnan(vif(degraded, image))
    with pytest.warns(UserWarning, match="ssim needs both sides >= 11"):
        assert math.isnan(ssim(degraded[..., :10, :10], image[..., :10, :10]))
    with pytest.warns(UserWarning, match="needs both sides"):
        values = untrained_suite(degraded, image)
    assert math.isnan(values["ms_ssim"]) and math.isnan(values["vif"])
    assert 0 < values["ssim"] < 1 and values["gmsd"] > 0
    assert values["lpips_alex"] > 0 and values["lpips_vgg"] > 0 and 0 < values["dists"] < 1


def test_inputs_must_be_8bit_images(untrained_suite):
    image = photo(64)
    with pytest.raises(ValueError, match="8-bit"):
        untrained_suite(image / 255, image / 255)
    with pytest.raises(ValueError, match="1×3×H×W"):
        untrained_suite(image, image[..., :32])


def test_untrained_networks_are_labelled():
    assert MetricSuite(pretrained=False).untrained == [
        "lpips_alex",
        "lpips_vgg",
        "dists",
        "pieapp",
        "fid",
        "kid",
    ]
    assert MetricSuite(["psnr", "dists"], fid=False, pretrained=False).untrained == ["dists"]
    assert MetricSuite(["psnr", "ssim"], fid=False, pretrained=True).untrained == []


def test_unknown_or_repeated_metric_names_are_rejected():
    with pytest.raises(ValueError, match=r"'niqe'.*known: psnr, ms_ssim, ssim, lpips_alex"):
        MetricSuite(["psnr", "niqe"], pretrained=False)
    with pytest.raises(ValueError, match="twice"):
        MetricSuite(["psnr", "psnr"], pretrained=False)


def test_untrained_networks_are_seeded_and_leave_the_random_state_alone():
    image = photo(64)
    degraded = noisy(image, 10)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    first = MetricSuite(["dists"], fid=False, pretrained=False)(degraded, image)
    assert torch.equal(torch.rand(3), expected)
    second = MetricSuite(["dists"], fid=False, pretrained=False)(degraded, image)
    assert first == second


@pytest.mark.parametrize(
    ("names", "fid", "present", "missing"),
    [
        (["lpips_alex"], False, [], "alexnet-owt-7be5be79.pth"),
        (["lpips_vgg"], False, [], "vgg16-397923af.pth"),
        (["dists"], False, [], "vgg16-397923af.pth"),
        (["dists"], False, ["vgg16-397923af.pth"], "dists_weights.pt"),
        (["pieapp"], False, [], "PieAPPv0.1.pth"),
        ([], True, [], "weights-inception-2015-12-05-6726825d.pth"),
    ],
)
def test_missing_weights_name_the_file_and_the_fix(
    tmp_path, monkeypatch, names, fid, present, missing
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in present:
        (weights / name).touch()
    with pytest.raises(WeightsNotFoundError, match=rf"{re.escape(missing)}.*fetch_weights\.py"):
        MetricSuite(names, fid=fid, weights_dir=weights, pretrained=True)


@pytest.mark.filterwarnings("ignore:The parameter 'pretrained'", "ignore:Arguments other than")
def test_dists_from_local_files_equals_piq_dists(tmp_path, monkeypatch):
    """Our DISTS reads VGG16 and α/β from weights_dir; piq's own DISTS, finding the same files in
    the torch hub cache, computes the same value."""
    from torchvision.models import vgg16

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(3)
    state = vgg16().state_dict()
    for key in [key for key in state if key.startswith("classifier.")]:
        # unused by DISTS: zero-stride stand-ins keep the file small (~59 MB instead of 528)
        state[key] = torch.zeros(1).expand(state[key].shape)
    torch.save(state, weights / "vgg16-397923af.pth")
    alpha, beta = torch.rand(1, 1475, 1, 1), torch.rand(1, 1475, 1, 1)
    total = alpha.sum() + beta.sum()
    torch.save({"alpha": alpha / total, "beta": beta / total}, weights / "dists_weights.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    suite = MetricSuite(["dists"], fid=False, weights_dir=weights, pretrained=True)
    assert suite.untrained == []
    image = photo(96)
    degraded = noisy(image, 15)
    ours = suite(degraded, image)["dists"]
    assert 0 < ours < 1

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name in ("vgg16-397923af.pth", "dists_weights.pt"):
        (hub / name).symlink_to(weights / name)
    reference = float(piq.DISTS(reduction="none")(degraded / 255, image / 255))
    assert ours == pytest.approx(reference, rel=1e-5)


def test_pieapp_from_a_local_file_equals_piq_pieapp(tmp_path, monkeypatch):
    """Our PieAPP reads its weights from weights_dir and scores patches in chunks; piq's own
    PieAPP, finding the same file in the torch hub cache, computes the same value."""
    from piq.pieapp import PieAPPModel

    torch.manual_seed(4)
    state = PieAPPModel().state_dict()
    # a rank-one fc1 (one random row, stride 0) keeps the 62 M-weight file at 0.5 MB
    row = state["fc1_score.weight"][:1].clone()
    state["fc1_score.weight"] = row.expand_as(state["fc1_score.weight"])
    state["ref_score_subtract.weight"] = state["ref_score_subtract.weight"].reshape(
        1
    )  # as released
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(state, weights / "PieAPPv0.1.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    suite = MetricSuite(["pieapp"], fid=False, weights_dir=weights, pretrained=True)
    suite._network("pieapp").chunk = 1  # two 64² patches (stride 27) in two chunks
    image = photo(128)[..., :64, :91]
    degraded = noisy(image, 15)
    ours = suite(degraded, image)["pieapp"]

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "PieAPPv0.1.pth").symlink_to(weights / "PieAPPv0.1.pth")
    reference = float(piq.PieAPP(reduction="none")(degraded / 255, image / 255))
    assert ours == pytest.approx(reference, rel=1e-5)
    assert ours != pytest.approx(suite(image, image.clone())["pieapp"])
    with pytest.warns(UserWarning, match="pieapp needs both sides >= 64"):
        assert math.isnan(suite(image[..., :60], image[..., :60])["pieapp"])

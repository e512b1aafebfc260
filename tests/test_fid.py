"""FID/KID on patches: HiFiC's patch protocol, torchmetrics' maths, the local Inception."""

from __future__ import annotations

import math

import pytest
import skimage.data
import torch
from torch import nn
from torchmetrics.image import FrechetInceptionDistance, KernelInceptionDistance

from modules.metrics import MetricSuite, extract_patches, fid_kid
from modules.metrics.fid import _untrained_inception_state, build_inception
from modules.metrics.suite import UNTRAINED_SEED
from modules.metrics.weights import seeded


@pytest.mark.parametrize(
    ("height", "width", "count"),
    [(512, 768, 6 + 2), (1200, 1200, 16 + 16), (768, 768, 9 + 4), (300, 200, 0), (300, 300, 1)],
)
def test_patch_counts(height, width, count):
    patches = extract_patches(torch.zeros(1, 3, height, width))
    assert patches.shape == (count, 3, 256, 256)


def test_patches_are_the_grid_then_the_shifted_grid():
    image = torch.arange(3 * 512 * 768, dtype=torch.float32).reshape(1, 3, 512, 768)
    patches = extract_patches(image)
    corners = [(0, 0), (0, 256), (0, 512), (256, 0), (256, 256), (256, 512)]
    corners += [(128, 128), (128, 384)]  # the crop [128:, 128:] is 384×640: one row of two
    assert len(patches) == len(corners)
    for patch, (top, left) in zip(patches, corners, strict=True):
        assert torch.equal(patch, image[0, :, top : top + 256, left : left + 256])


def test_identical_feature_sets_have_zero_fid():
    features = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = fid_kid(features, features.clone())
    assert scores["fid"] == pytest.approx(0, abs=1e-9)
    shifted = fid_kid(features, features + 1)
    assert shifted["fid"] == pytest.approx(16, rel=1e-9)  # |Δμ|² = 16, equal covariances


class TinyFeatures(nn.Module):
    """A small untrained fp64 feature extractor of uint8 images (torchmetrics' custom features)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        with seeded(0):
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 5, stride=4),
                nn.ReLU(),
                nn.Conv2d(8, 8, 3, stride=2),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            ).double()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.double() / 255)


def photo_patches(sigma: float) -> torch.Tensor:
    """The patches of two scikit-image photos with seeded noise of std `sigma`, as uint8."""
    photos = [skimage.data.astronaut(), skimage.data.chelsea()[:, :384]]
    generator = torch.Generator().manual_seed(1)
    patches = []
    for array in photos:
        image = torch.from_numpy(array).permute(2, 0, 1)[None].float()
        image = image + sigma * torch.randn(image.shape, generator=generator)
        patches.append(extract_patches(image.round().clamp(0, 255)))
    return torch.cat(patches).to(torch.uint8)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_fid_kid_of_gathered_features_equal_torchmetrics_on_the_images():
    real, fake = photo_patches(0), photo_patches(25)
    extractor = TinyFeatures().eval()
    with torch.no_grad():
        scores = fid_kid(
            extractor(real), extractor(fake), kid_subset_size=4, kid_subsets=20, seed=3
        )

        fid = FrechetInceptionDistance(feature=extractor)
        kid = KernelInceptionDistance(feature=extractor, subsets=20, subset_size=4)
        for metric in (fid, kid):
            metric.update(real, real=True)
            metric.update(fake, real=False)
        torch.manual_seed(3)
        kid_mean, _ = kid.compute()
    assert len(real) == 5 + 1 and scores["fid"] > 0
    assert scores["fid"] == pytest.approx(float(fid.compute()), rel=1e-6)
    assert scores["kid"] == pytest.approx(float(kid_mean), rel=1e-6)


def test_kid_subsets_are_seeded():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    fake = torch.randn(40, 8, generator=generator, dtype=torch.float64) + 0.5
    first = fid_kid(real, fake, kid_subset_size=10, kid_subsets=5, seed=0)
    assert fid_kid(real, fake, kid_subset_size=10, kid_subsets=5, seed=0) == first
    assert fid_kid(real, fake, kid_subset_size=10, kid_subsets=5, seed=1)["kid"] != first["kid"]
    assert fid_kid(real, fake, kid_subset_size=10, kid_subsets=5, seed=1)["fid"] == first["fid"]


def test_too_few_patches_give_nan_with_a_warning():
    one = torch.randn(1, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="at least 2 patches"):
        scores = fid_kid(one, one)
    assert math.isnan(scores["fid"]) and math.isnan(scores["kid"])


@pytest.fixture(scope="module")
def image_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 384×384 photo crop (2 patches) and its noisy version, 8-bit."""
    original = torch.from_numpy(skimage.data.astronaut()[:384, :384]).permute(2, 0, 1)[None]
    original = original.float()
    noise = torch.randn(original.shape, generator=torch.Generator().manual_seed(0))
    return (original + 20 * noise).round().clamp(0, 255), original


@pytest.fixture(scope="module")
def untrained_features(image_pair) -> tuple[torch.Tensor, torch.Tensor]:
    suite = MetricSuite([], fid=True, pretrained=False)
    assert suite.untrained == ["fid", "kid"]
    return suite.patch_features(*image_pair)


def test_patch_features_of_the_untrained_inception(image_pair, untrained_features):
    real, fake = untrained_features
    assert real.shape == fake.shape == (2, 2048)
    assert real.dtype == torch.float64 and real.device.type == "cpu"
    assert not torch.allclose(real, fake)
    with seeded(UNTRAINED_SEED):
        inception = build_inception(pretrained=False)
    _, original = image_pair
    with torch.no_grad():  # the grid patch, then the patch of the crop [128:, 128:]
        expected = inception(extract_patches(original).to(torch.uint8))[0].double()
    torch.testing.assert_close(real, expected)


def test_inception_loads_the_local_weights_file(
    tmp_path, monkeypatch, image_pair, untrained_features
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with seeded(UNTRAINED_SEED):
        state = _untrained_inception_state()
    # untrained, the network is positively homogeneous (zero biases, BN at its initial
    # statistics): doubling the first convolution doubles the pool features
    state["Conv2d_1a_3x3.conv.weight"] *= 2
    torch.save(state, tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    suite = MetricSuite([], fid=True, weights_dir=tmp_path, pretrained=True)
    assert suite.untrained == []
    real, fake = suite.patch_features(*image_pair)
    torch.testing.assert_close(real, 2 * untrained_features[0])
    torch.testing.assert_close(fake, 2 * untrained_features[1])

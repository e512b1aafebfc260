"""FID and KID on image patches, following HiFiC's protocol as CorrDiff describes it.

Each image is cut into non-overlapping 256×256 patches, plus those of the image shifted by 128 px
in both directions; every patch gives the 2048-d pool features of the FID Inception
(torch-fidelity's port of the TensorFlow graph, fed uint8 images). FID and KID over a data set are
torchmetrics' on the gathered feature matrices, in fp64.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)
from torchmetrics.image import FrechetInceptionDistance, KernelInceptionDistance
from torchvision.models import inception_v3

from modules.metrics.weights import file_name, find_weights, seeded

#: torch-fidelity's FID Inception weights, converted from TensorFlow's inception-2015-12-05
INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
#: dimension of the Inception pool features
FEATURES = 2048


def extract_patches(image: Tensor, size: int = 256, shift: int = 128) -> Tensor:
    """1×C×H×W -> P×C×size×size: the non-overlapping patches of the image in row-major order,
    then those of the image shifted by `shift` px in both directions (its crop [shift:, shift:]);
    remainders that do not fill a patch are dropped."""
    return torch.cat([_tiles(image, size), _tiles(image[..., shift:, shift:], size)])


def _tiles(image: Tensor, size: int) -> Tensor:
    batch, channels, height, width = image.shape
    rows, cols = height // size, width // size
    tiles = image[..., : rows * size, : cols * size].reshape(
        batch, channels, rows, size, cols, size
    )
    return tiles.permute(0, 2, 4, 1, 3, 5).reshape(-1, channels, size, size)


def _untrained_inception_state() -> dict[str, Tensor]:
    """Untrained weights for the FID Inception, from the current random state.

    torchvision's Inception3 has the same parameter names and shapes (both follow the TensorFlow
    graph); He-initialised convolutions keep the pool features O(1) through its depth.
    """
    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


def build_inception(
    weights_dir: str | Path | None = None, pretrained: bool = True
) -> FeatureExtractorInceptionV3:
    """Frozen FID Inception mapping uint8 N×3×H×W images to a 1-tuple of N×2048 pool features;
    `pretrained=False` gives an untrained one."""
    if pretrained:
        source = str(find_weights(file_name(INCEPTION_WEIGHTS_URL), weights_dir, "FID/KID"))
    else:
        source = io.BytesIO()
        torch.save(_untrained_inception_state(), source)
        source.seek(0)
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", [str(FEATURES)], feature_extractor_weights_path=source
    )


class _GivenFeatures(nn.Module):
    """The feature extractor of torchmetrics' FID/KID when the features are already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_kid(
    real: Tensor,
    fake: Tensor,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """FID and KID (torchmetrics, fp64) between the rows of two P×D feature matrices.

    KID averages `kid_subsets` polynomial-kernel MMDs over random subsets of
    min(`kid_subset_size`, P) rows, drawn from `seed`. NaN with a warning for fewer than 2 rows.
    """
    count = min(len(real), len(fake))
    if count < 2:
        warnings.warn(f"FID/KID need at least 2 patches per set, got {count}: NaN", stacklevel=2)
        return {"fid": math.nan, "kid": math.nan}
    real, fake = real.detach().cpu().double(), fake.detach().cpu().double()
    given = _GivenFeatures(real.shape[1])
    # the features are already gathered from every rank: no torchmetrics sync (one rank computes)
    fid = FrechetInceptionDistance(feature=given, sync_on_compute=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")
        kid = KernelInceptionDistance(
            feature=given,
            subsets=kid_subsets,
            subset_size=min(kid_subset_size, count),
            sync_on_compute=False,
        )
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with seeded(seed):
        kid_mean, _ = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean)}

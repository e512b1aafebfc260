"""Every metric of the evaluation protocol behind one object that builds its networks once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from modules.metrics.dists import DISTS_WEIGHTS_URL, VGG16_WEIGHTS_URL, build_dists
from modules.metrics.fid import (
    FEATURES,
    INCEPTION_WEIGHTS_URL,
    build_inception,
    extract_patches,
)
from modules.metrics.full_reference import FULL_REFERENCE, MIN_SIDE, _fits, check_8bit
from modules.metrics.lpips import BACKBONE_WEIGHTS, build_lpips
from modules.metrics.pieapp import PIEAPP_WEIGHTS_URL, build_pieapp, pieapp_score
from modules.metrics.weights import file_name, find_weights, seeded

#: per-image metrics, in their column order
DEFAULT_METRICS = (
    "psnr",
    "ms_ssim",
    "ssim",
    "lpips_alex",
    "lpips_vgg",
    "dists",
    "gmsd",
    "vif",
    "pieapp",
)
#: URLs of the pretrained weight files each network reads ("fid": the Inception of FID and KID)
WEIGHT_URLS: dict[str, tuple[str, ...]] = {
    "lpips_alex": (BACKBONE_WEIGHTS["alex"].url,),
    "lpips_vgg": (BACKBONE_WEIGHTS["vgg"].url,),
    "dists": (VGG16_WEIGHTS_URL, DISTS_WEIGHTS_URL),
    "pieapp": (PIEAPP_WEIGHTS_URL,),
    "fid": (INCEPTION_WEIGHTS_URL,),
}
#: seed of the untrained networks built with `pretrained=False`
UNTRAINED_SEED = 0
#: HiFiC's FID/KID patches: size, and the shift of the second pass
PATCH_SIZE, PATCH_SHIFT = 256, 128
#: patches per Inception forward
PATCH_BATCH = 32


class MetricSuite:
    """The per-image metrics `names` and, with `fid`, the patch features of FID/KID.

    Images are 1×3×H×W float tensors holding integers 0..255 (`quantize_8bit`), on any device.
    Networks are built on first use, frozen, in eval mode on `device`; their weight files are
    looked up at construction, so a missing one fails before any image is coded.
    `pretrained=False` builds seeded untrained networks (tests, smoke runs) and lists the metrics
    they affect in `untrained`, so that results can be labelled.
    """

    def __init__(
        self,
        names: Sequence[str] = DEFAULT_METRICS,
        fid: bool = True,
        weights_dir: str | Path | None = None,
        pretrained: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        unknown = [name for name in names if name not in DEFAULT_METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(DEFAULT_METRICS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"metrics listed twice in {list(names)}")
        self.names = list(names)
        self.fid = fid
        self.weights_dir = weights_dir
        self.pretrained = pretrained
        self.device = torch.device(device)
        networks = [name for name in self.names if name in WEIGHT_URLS] + (["fid"] if fid else [])
        if pretrained:
            for network in networks:
                for url in WEIGHT_URLS[network]:
                    find_weights(file_name(url), weights_dir, f"the {network} metric")
        self.untrained: list[str] = [] if pretrained else networks + (["kid"] if fid else [])
        self._networks: dict[str, nn.Module] = {}

    def _network(self, name: str) -> nn.Module:
        if name not in self._networks:
            with seeded(UNTRAINED_SEED):
                if name == "fid":
                    net = build_inception(self.weights_dir, self.pretrained)
                elif name == "dists":
                    net = build_dists(self.weights_dir, self.pretrained)
                elif name == "pieapp":
                    net = build_pieapp(self.weights_dir, self.pretrained)
                else:
                    net = build_lpips(
                        name.removeprefix("lpips_"), self.weights_dir, self.pretrained
                    )
            self._networks[name] = net.requires_grad_(False).eval().to(self.device)
        return self._networks[name]

    def _metric(self, name: str, decoded: Tensor, original: Tensor) -> float:
        if name in FULL_REFERENCE:
            return FULL_REFERENCE[name](decoded, original)
        if name in MIN_SIDE and not _fits(name, original):
            return math.nan
        net = self._network(name)
        if name == "dists":
            return float(net(decoded.float() / 255, original.float() / 255))
        if name == "pieapp":
            return pieapp_score(net, decoded.float() / 255, original.float() / 255)
        return float(net(decoded.float() / 127.5 - 1, original.float() / 127.5 - 1))

    def __call__(self, decoded: Tensor, original: Tensor) -> dict[str, float]:
        """Per-image metrics of one decoded image against its original, in `names` order."""
        check_8bit(decoded, original)
        decoded, original = decoded.to(self.device), original.to(self.device)
        with torch.no_grad():
            return {name: self._metric(name, decoded, original) for name in self.names}

    def _patch_features(self, image: Tensor) -> Tensor:
        patches = extract_patches(image.to(self.device), PATCH_SIZE, PATCH_SHIFT)
        if len(patches) == 0:
            return torch.zeros(0, FEATURES, dtype=torch.float64)
        inception = self._network("fid")
        features = [inception(batch.to(torch.uint8))[0] for batch in patches.split(PATCH_BATCH)]
        return torch.cat(features).double().cpu()

    def patch_features(self, decoded: Tensor, original: Tensor) -> tuple[Tensor, Tensor]:
        """(real, fake): the Inception features of the original's and the decoded image's
        patches (`extract_patches`), each P×2048 fp64 on the CPU, to gather for `fid_kid`."""
        if not self.fid:
            raise ValueError("this MetricSuite was built with fid=False")
        check_8bit(decoded, original)
        with torch.no_grad():
            return self._patch_features(original), self._patch_features(decoded)

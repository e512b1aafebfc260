"""LPIPS (Zhang et al. 2018) with its ImageNet backbone loaded from a local file, never downloaded.

The `lpips` package ships the linear calibration layers; the AlexNet/VGG16 backbone weights are
torchvision's, read from `paths.weights_dir` or the torch hub cache. A missing file is an error
naming it and `scripts/fetch_weights.py`; `pretrained_backbone=False` builds an untrained
backbone for tests and smoke runs, and the module says so (`untrained_backbone`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
from torchvision.models import AlexNet_Weights, VGG16_Weights

from modules.metrics.weights import WeightsNotFoundError, file_name, find_weights

__all__ = ["BACKBONE_WEIGHTS", "WeightsNotFoundError", "build_lpips"]

#: torchvision weights of each LPIPS backbone (their file names are torchvision's)
BACKBONE_WEIGHTS = {"vgg": VGG16_Weights.IMAGENET1K_V1, "alex": AlexNet_Weights.IMAGENET1K_V1}


def build_lpips(
    net: str = "vgg", weights_dir: str | Path | None = None, pretrained_backbone: bool = True
) -> lpips.LPIPS:
    """Frozen LPIPS-`net` ("vgg" or "alex") in eval mode taking images in [-1, 1]."""
    if net not in BACKBONE_WEIGHTS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_WEIGHTS)}, got {net!r}")
    path = None  # looked up first: a missing file fails before the network is built
    if pretrained_backbone:
        path = find_weights(file_name(BACKBONE_WEIGHTS[net].url), weights_dir, f"LPIPS-{net}")
    with warnings.catch_warnings():  # lpips builds its backbone with torchvision's old arguments
        warnings.filterwarnings("ignore", "The parameter 'pretrained' is deprecated", UserWarning)
        warnings.filterwarnings("ignore", "Arguments other than a weight enum", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        features = {
            key.removeprefix("features."): value
            for key, value in torch.load(path, map_location="cpu", weights_only=True).items()
            if key.startswith("features.")
        }
        # lpips splits torchvision's `features` into slices keeping the layer indices as names
        loaded = set()
        for slice_ in model.net.children():
            for index, layer in slice_.named_children():
                for param_name, param in layer.named_parameters():
                    param.data.copy_(features[f"{index}.{param_name}"])
                    loaded.add(f"{index}.{param_name}")
        if loaded != set(features):
            raise RuntimeError(f"{path}: unused backbone weights {sorted(set(features) - loaded)}")
    model.requires_grad_(False).eval()
    model.untrained_backbone = not pretrained_backbone
    return model

"""LPIPS (Zhang et al. 2018) with its ImageNet backbone loaded from a local file, never downloaded.

The `lpips` package ships the linear calibration layers; the AlexNet/VGG16 backbone weights are
torchvision's, read from `paths.weights_dir` or the torch hub cache. A missing file is an error
naming it and `scripts/fetch_weights.py`; `pretrained_backbone=False` builds an untrained
backbone for tests and smoke runs, and the module says so (`untrained_backbone`).
"""

from __future__ import annotations

from pathlib import Path

import lpips
import torch
from torchvision.models import AlexNet_Weights, VGG16_Weights

#: torchvision weights of each LPIPS backbone (their file names are torchvision's)
BACKBONE_WEIGHTS = {"vgg": VGG16_Weights.IMAGENET1K_V1, "alex": AlexNet_Weights.IMAGENET1K_V1}


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weight file is not on this machine; the message says how to get it."""


def backbone_weights_file(net: str, weights_dir: str | Path | None) -> Path:
    """Local file of the torchvision backbone of LPIPS-`net` ("vgg" or "alex")."""
    if net not in BACKBONE_WEIGHTS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_WEIGHTS)}, got {net!r}")
    name = Path(BACKBONE_WEIGHTS[net].url).name
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / name]
    if weights_dir is not None:
        candidates.insert(0, Path(weights_dir) / name)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        f"LPIPS-{net} needs {name}; looked in {', '.join(str(c.parent) for c in candidates)}. "
        f"Run `python scripts/fetch_weights.py --weights-dir {weights_dir or 'weights'}` on a "
        "machine with internet access and copy the folder here (paths.weights_dir)."
    )


def build_lpips(
    net: str = "vgg", weights_dir: str | Path | None = None, pretrained_backbone: bool = True
) -> lpips.LPIPS:
    """Frozen LPIPS-`net` in eval mode taking images in [-1, 1]."""
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if pretrained_backbone:
        path = backbone_weights_file(net, weights_dir)
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

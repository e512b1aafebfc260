"""PieAPP (Prashnani et al. 2018) as piq implements it, with its weights read from a local file.

piq's `PieAPP` constructor downloads its weight file; `LocalPieAPP` builds the same module from
a given `PieAPPModel` instead, and scores the 64² patches (stride 27, piq's default) in chunks so
that large images fit in memory. The per-patch scores and the weighted mean are piq's.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from piq.functional import crop_patches
from piq.pieapp import PieAPP, PieAPPModel
from torch import Tensor

from modules.metrics.weights import file_name, find_weights

#: piq's PieAPP weights (the official model, re-saved by piq)
PIEAPP_WEIGHTS_URL: str = PieAPP._weights_url
#: side of PieAPP's square patches: smaller images have no score
PATCH = PieAPPModel.FEATURES


class LocalPieAPP(PieAPP):
    """piq's PieAPP (lower is better) on batches of images in [0, 1], one score per image."""

    def __init__(self, model: PieAPPModel, stride: int = 27, chunk: int = 256) -> None:
        # PieAPP.__init__ only downloads the weights, freezes them and stores these settings
        torch.nn.modules.loss._Loss.__init__(self, reduction="none")
        self.model = model.requires_grad_(False)
        self.data_range = 1.0
        self.stride = stride
        self.enable_grad = False
        self.chunk = chunk

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """PieAPP of predictions `x` against references `y` (N×3×H×W, H and W >= 64)."""
        x_patches = crop_patches(x * 255, size=PATCH, stride=self.stride)
        y_patches = crop_patches(y * 255, size=PATCH, stride=self.stride)
        distances, weights = [], []
        with torch.no_grad():
            for x_chunk, y_chunk in zip(
                x_patches.split(self.chunk), y_patches.split(self.chunk), strict=True
            ):
                x_features, x_weights = self.model(x_chunk)
                y_features, y_weights = self.model(y_chunk)
                d, w = self.model.compute_difference(
                    y_features - x_features, y_weights - x_weights
                )
                distances.append(d)
                weights.append(w)
        distances = torch.cat(distances).reshape(x.shape[0], -1)
        weights = torch.cat(weights).reshape(x.shape[0], -1)
        return (distances * weights).sum(1) / weights.sum(1)


def build_pieapp(weights_dir: str | Path | None = None, pretrained: bool = True) -> LocalPieAPP:
    """Frozen PieAPP in eval mode; `pretrained=False` gives an untrained model (tests)."""
    model = PieAPPModel()
    if pretrained:
        path = find_weights(file_name(PIEAPP_WEIGHTS_URL), weights_dir, "PieAPP")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # as piq: the released file stores this 1×1 weight as a vector
        state["ref_score_subtract.weight"] = state["ref_score_subtract.weight"].reshape(1, 1)
        model.load_state_dict(state)
    return LocalPieAPP(model).eval()


def pieapp_score(net: LocalPieAPP, decoded: Tensor, original: Tensor) -> float:
    """PieAPP of one image in [0, 1]; NaN with a warning when a side is below 64 px."""
    if min(original.shape[-2:]) < PATCH:
        warnings.warn(
            f"pieapp needs both sides >= {PATCH} px, got {tuple(original.shape[-2:])}: NaN",
            stacklevel=2,
        )
        return math.nan
    return float(net(decoded, original))

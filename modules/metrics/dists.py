"""DISTS (Ding et al. 2020) as piq implements it, with its weights read from local files.

piq's `DISTS` constructor downloads torchvision's VGG16 and its α/β file; `LocalDISTS` builds the
same module from a given VGG16 `features` stack and α/β instead, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from piq.perceptual import DISTS, VGG16_LAYERS, ContentLoss
from torch import Tensor, nn
from torchvision.models import VGG16_Weights, vgg16

from modules.metrics.weights import file_name, find_weights

#: piq's α/β file (the official DISTS weights re-saved by piq)
DISTS_WEIGHTS_URL: str = DISTS._weights_url
#: torchvision's ImageNet VGG16, the backbone DISTS was trained with (the file LPIPS-VGG reads)
VGG16_WEIGHTS_URL = VGG16_Weights.IMAGENET1K_V1.url
#: as in piq's DISTS.__init__: the VGG16 stages compared, and the channels of the input + stages
LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (3, 64, 128, 256, 512, 512)


class LocalDISTS(DISTS):
    """piq's DISTS (1 - similarity, 0 for identical images) on images in [0, 1], batched."""

    def __init__(self, vgg_features: nn.Sequential, alpha: Tensor, beta: Tensor) -> None:
        weights = [*alpha.split(CHANNELS, dim=1), *beta.split(CHANNELS, dim=1)]
        # DISTS.__init__ only downloads these and calls ContentLoss.__init__ with them
        ContentLoss.__init__(
            self,
            vgg_features,
            layers=[VGG16_LAYERS[layer] for layer in LAYERS],
            weights=weights,
            replace_pooling=True,
            reduction="none",
            normalize_features=False,
            allow_layers_weights_mismatch=True,
        )


def build_dists(weights_dir: str | Path | None = None, pretrained: bool = True) -> LocalDISTS:
    """Frozen DISTS in eval mode; `pretrained=False` gives an untrained VGG16 and equal α, β."""
    features = vgg16().features
    if pretrained:
        vgg_path = find_weights(file_name(VGG16_WEIGHTS_URL), weights_dir, "DISTS")
        alpha_beta_path = find_weights(file_name(DISTS_WEIGHTS_URL), weights_dir, "DISTS")
        state = torch.load(vgg_path, map_location="cpu", weights_only=True)
        features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        )
        alpha_beta = torch.load(alpha_beta_path, map_location="cpu", weights_only=True)
        alpha, beta = alpha_beta["alpha"].detach(), alpha_beta["beta"].detach()
    else:
        # equal α and β summing to 1 keep the untrained DISTS in [0, 1]
        alpha = beta = torch.full((1, sum(CHANNELS), 1, 1), 1 / (2 * sum(CHANNELS)))
    return LocalDISTS(features, alpha, beta).requires_grad_(False).eval()

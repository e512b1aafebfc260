"""Download the pretrained weights that metrics and losses read from `paths.weights_dir`.

Run once on a machine with internet access, then copy the folder to the training machines:

    python scripts/fetch_weights.py --weights-dir weights

Fetches torchvision's VGG16 (LPIPS-VGG, DISTS) and AlexNet (LPIPS-Alex), piq's DISTS α/β and
PieAPP model, and torch-fidelity's FID Inception (FID, KID). Training and evaluation never
download anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.metrics import WEIGHT_URLS
from modules.metrics.weights import file_name

#: torchvision's file names end in the first hex digits of the file's sha256
HASHED_NAMES_HOST = "https://download.pytorch.org/"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    args = parser.parse_args()
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    users: dict[str, list[str]] = {}
    for metric, urls in WEIGHT_URLS.items():
        for url in urls:
            users.setdefault(url, []).append(metric)
    for url, metrics in users.items():
        target = args.weights_dir / file_name(url)
        label = f"{target} ({', '.join(metrics)})"
        if target.is_file():
            print(f"{label}: present")
            continue
        hash_prefix = target.stem[-8:] if url.startswith(HASHED_NAMES_HOST) else None
        torch.hub.download_url_to_file(url, str(target), hash_prefix=hash_prefix)
        print(f"{label}: downloaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

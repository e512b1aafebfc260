"""Download the pretrained weights that metrics and losses read from `paths.weights_dir`.

Run once on a machine with internet access, then copy the folder to the training machines:

    python scripts/fetch_weights.py --weights-dir weights

Training and evaluation never download anything themselves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.metrics.lpips import BACKBONE_WEIGHTS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    args = parser.parse_args()
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    for net, weights in BACKBONE_WEIGHTS.items():
        target = args.weights_dir / Path(weights.url).name
        if target.is_file():
            print(f"LPIPS-{net} backbone: {target} (present)")
            continue
        # torchvision's file names end in the first hex digits of the file's sha256
        torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=target.stem[-8:])
        print(f"LPIPS-{net} backbone: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

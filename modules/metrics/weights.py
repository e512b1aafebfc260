"""Local pretrained weight files of the metric networks, and seeded untrained stand-ins.

Metrics never download: every weight file is looked up in `paths.weights_dir`, then in the torch
hub cache (`$TORCH_HOME/hub/checkpoints`), and a missing file is a `WeightsNotFoundError` naming
it and `scripts/fetch_weights.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weight file is not on this machine; the message says how to get it."""


def file_name(url: str) -> str:
    """Name under which the file at `url` is stored (as torch hub names its downloads)."""
    return Path(urlparse(url).path).name


def find_weights(name: str, weights_dir: str | Path | None, needed_by: str) -> Path:
    """Path of the weight file `name` in `weights_dir` or the torch hub cache.

    Raises WeightsNotFoundError naming the file, what `needed_by` it and the fetch script.
    """
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / name]
    if weights_dir is not None:
        candidates.insert(0, Path(weights_dir) / name)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        f"{needed_by} needs {name}; looked in {', '.join(str(c.parent) for c in candidates)}. "
        f"Run `python scripts/fetch_weights.py --weights-dir {weights_dir or 'weights'}` on a "
        "machine with internet access and copy the folder here (paths.weights_dir)."
    )


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU generator seeded, restoring the caller's random state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

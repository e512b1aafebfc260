"""Official-checkpoint fixtures: a file's layout with its large tensors as seeded specs.

A fixture under tests/fixtures/official/ stores the nested structure of an official file
("layout"), the input it was run on and the official code's outputs. Small entries of the layout
are the tensors themselves; large ones are specs that `materialize` turns into the same tensors
every time:
    ("random", shape, dtype)       uniform in ±√(3 / fan-in) (±0.5 for vectors), seeded by
                                   the entry's path in the file
    ("zeros", shape, dtype)        (coder tables the importer rebuilds)
    ("checkerboard", shape)        the mask of the ELiC re-implementation's 5×5
                                   CheckboardMaskedConv2d (1 at odd kernel offsets)
    ("cdc_schedule", name, N, s)   the `train_*` buffer `name` of CDC's GaussianDiffusion for
                                   schedule s ("cosine" or "linear"), by the official formulas
The fixtures were produced by running the official networks on `materialize(layout)`; the tests
write `materialize(layout)` to disk as the official file and import it.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "official"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32,
          "int64": torch.int64}  # fmt: skip


def random_tensor(path: str, shape: tuple[int, ...], dtype: str = "float32") -> torch.Tensor:
    """Uniform in ±√(3 / fan-in) (±0.5 for 0-/1-D), seeded by crc32(path); float64 draws."""
    generator = torch.Generator().manual_seed(zlib.crc32(path.encode()))
    u = torch.rand(shape, dtype=torch.float64, generator=generator) * 2 - 1
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 0
    bound = math.sqrt(3 / fan_in) if fan_in else 0.5
    return (u * bound).to(DTYPES[dtype])


def cdc_schedule(name: str, steps: int, schedule: str) -> torch.Tensor:
    """A `train_*` buffer of the official CDC GaussianDiffusion (xparam/modules/utils.py and
    denoising_diffusion.py: numpy float64, stored as float32)."""
    if schedule == "cosine":  # cosine_beta_schedule(N), s = 0.008
        s = 0.008
        x = np.linspace(0, steps + 1, steps + 1)
        alphas_cumprod = np.cos(((x / (steps + 1)) + s) / (1 + s) * np.pi * 0.5) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        betas = np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)
    else:  # linear_beta_schedule(N)
        scale = 1000 / steps
        betas = np.linspace(scale * 0.0001, scale * 0.02, steps)
    a = np.cumprod(1.0 - betas, axis=0)
    values = {
        "train_snr": a / (1 - a),
        "train_betas": betas,
        "train_alphas_cumprod": a,
        "train_sqrt_alphas_cumprod": np.sqrt(a),
        "train_sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - a),
        "train_sqrt_recip_alphas_cumprod": np.sqrt(1.0 / a),
        "train_sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / a - 1),
    }
    return torch.tensor(values[name], dtype=torch.float32)


def materialize(node: Any, path: str = "", meta: bool = False) -> Any:
    """The official file's object from a fixture layout (see the module docstring); `meta`:
    "random" and "zeros" entries as shape-only meta tensors (for key and shape checks)."""
    if isinstance(node, dict):
        return {k: materialize(v, f"{path}/{k}", meta) for k, v in node.items()}
    if isinstance(node, tuple) and node and node[0] in ("random", "zeros") and meta:
        return torch.empty(tuple(node[1]), dtype=DTYPES[node[2]], device="meta")
    if isinstance(node, tuple) and node and node[0] == "random":
        return random_tensor(path, tuple(node[1]), node[2])
    if isinstance(node, tuple) and node and node[0] == "zeros":
        return torch.zeros(tuple(node[1]), dtype=DTYPES[node[2]])
    if isinstance(node, tuple) and node and node[0] == "checkerboard":
        mask = torch.zeros(tuple(node[1]))
        mask[:, :, 0::2, 1::2] = 1
        mask[:, :, 1::2, 0::2] = 1
        return mask
    if isinstance(node, tuple) and node and node[0] == "cdc_schedule":
        return cdc_schedule(node[1], node[2], node[3])
    return node


def load_fixture(name: str) -> dict[str, Any]:
    """A fixture file: {"layout", "inputs", "outputs", ...}."""
    return torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)


def write_official(fixture: dict[str, Any], path: Path) -> Path:
    """Write the official file of a fixture to `path` (as the official code would save it)."""
    torch.save(materialize(fixture["layout"]), path)
    return path

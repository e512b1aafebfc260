"""Bit-exactness on one device and streams across devices, for every method, as a Markdown table.

For each codec (real sizes, random weights; `--quick`: the tiny smoke sizes) on `--device`:
whether `decompress(compress(x))` equals the eval-mode reconstruction bit for bit and is the same
when decoded twice; whether a CPU copy with the same weights writes the same bytes; whether that
CPU copy decodes the device's stream to the same 8-bit pixels (else the PSNR between the two
decodes, or the error), and the device the CPU's stream.

    python scripts/gpu_consistency.py --device cuda --backbone-path <SD folder>
    python scripts/gpu_consistency.py --device cpu --quick --backbone-path <tiny SD folder>
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.base import CodecModule
from modules.cdc import CDCModule
from modules.corrdiff import CorrDiffModule
from modules.diffusion import save_random_sd
from modules.elic import ELICModule
from modules.entropy import BitstreamError
from modules.foundation import FoundationModule, NaiveFoundationModule
from modules.metrics import psnr, quantize_8bit
from modules.rdeic import RDEICModule

#: per method: (real-size kwargs, tiny kwargs); the SD-based ones also get the backbone folder
#: (the foundation codecs decode 8 respaced passes at real size, to fit the check's time)
SIZES = {
    "elic": ({}, {"N": 16, "M": 32, "groups": [4, 4, 8, 16]}),
    "cdc": ({}, {"dim": 8, "dim_mults": [1, 2, 2, 2, 2, 2], "compressor_dim": 8}),
    "rdeic": ({}, {"channels": 32, "groups": [4, 4, 8, 16], "num_codes": 64, "hint_channels": 16}),
    "corrdiff": (
        {},
        {
            "elic": {"N": 16, "M": 32, "groups": [4, 4, 8, 16]},
            "unet": {"channels": 8, "norm_groups": 4, "layers_per_block": 1},
            "decode_steps": 2,
            "gamma_search": {"evaluations": 2},
        },
    ),
    "foundation": (
        {"decode_steps": 8},
        {
            "estimator_widths": [16, 32],
            "hyper_channels": 16,
            "side_channels": 16,
            "context_channels": 16,
            "decode_steps": 2,
        },
    ),
    "foundation_naive": ({"decode_steps": 8}, {"decode_steps": 2}),
}


def builders(backbone: str, quick: bool) -> dict[str, Callable[[], CodecModule]]:
    """A random-weight codec per method (the SD-based ones on the `backbone` folder)."""
    size = 1 if quick else 0
    backbone_cfg = {"name": "sd21_base", "path": backbone}
    sd = {"backbone": backbone_cfg, "lpips_pretrained_backbone": False}
    return {
        "elic": lambda: ELICModule(lmbda=0.032, **SIZES["elic"][size]),
        "cdc": lambda: CDCModule(prediction="x", **SIZES["cdc"][size]),
        "rdeic": lambda: RDEICModule(**sd, **SIZES["rdeic"][size]),
        "foundation": lambda: FoundationModule(backbone=backbone_cfg, **SIZES["foundation"][size]),
        "foundation_naive": lambda: NaiveFoundationModule(
            backbone=backbone_cfg, **SIZES["foundation_naive"][size]
        ),
        "corrdiff": lambda: CorrDiffModule(
            elic_random_init=True, perceptual_pretrained=False, **SIZES["corrdiff"][size]
        ),
    }


def decode_on(codec: CodecModule, data: bytes) -> torch.Tensor | str:
    """8-bit decode of `data`, or the one-line error."""
    try:
        return quantize_8bit(codec.decompress(data)).cpu()
    except BitstreamError as error:
        return f"error: {error}"


def compare(reference: torch.Tensor, other: torch.Tensor | str) -> str:
    """ "same pixels", "PSNR x dB" between two 8-bit decodes, or the error."""
    if isinstance(other, str):
        return other
    if torch.equal(reference, other):
        return "same pixels"
    value = psnr(other, reference)
    return f"differs: PSNR {value:.2f} dB" if math.isfinite(value) else "differs"


def check(name: str, build: Callable[[], CodecModule], device: torch.device, side: int) -> str:
    """One Markdown row of the checks of one method."""
    codecs = []
    for _ in range(2):  # built twice from one seed (a deepcopy of RDEIC decodes ±1 differently)
        torch.manual_seed(0)
        codecs.append(build().eval())
    cpu, here = codecs[0], codecs[1].to(device)
    cpu.update(force=True)
    here.update(force=True)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    data = here.compress(x)
    decoded = quantize_8bit(here.decompress(data)).cpu()
    again = quantize_8bit(here.decompress(data)).cpu()
    reconstruction = quantize_8bit(here.reconstruct(x)[0]).cpu()
    cpu_data = cpu.compress(x)
    cells = [
        name,
        str(len(data)),
        "yes" if torch.equal(decoded, reconstruction) else compare(reconstruction, decoded),
        "yes" if torch.equal(decoded, again) else compare(decoded, again),
        "yes" if cpu_data == data else "no",
        compare(decoded, decode_on(cpu, data)),
        compare(quantize_8bit(cpu.decompress(cpu_data)).cpu(), decode_on(here, cpu_data)),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone-path", help="SD-layout folder (default: a random one)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 128² image")
    parser.add_argument("--methods", nargs="+", default=sorted(SIZES))
    args = parser.parse_args()
    device = torch.device(args.device)
    side = 128 if args.quick else 256
    with tempfile.TemporaryDirectory(prefix="consistency_sd_") as folder:
        backbone = args.backbone_path or str(
            save_random_sd(folder, seed=0, size="tiny" if args.quick else "sd21")
        )
        codecs = builders(backbone, args.quick)
        print(f"{side}×{side} random image, random weights, {device} vs CPU\n")
        print(
            f"| method | bytes | {device.type} decode = eval forward | decoded twice: same "
            f"| CPU writes the same bytes | {device.type} stream, CPU decode "
            f"| CPU stream, {device.type} decode |"
        )
        print("|---" * 7 + "|")
        for name in args.methods:
            print(check(name, codecs[name], device, side), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark CDC decoding: seconds per 768×512 image at 1, 17 and 65 DDIM steps, and the share of
that time spent inside the U-Net (the rest is entropy decoding, the context decoder, the sampler).

    python scripts/bench_cdc.py                         # full-size X model, random weights
    python scripts/bench_cdc.py --device cuda --bf16    # on a GPU, U-Net under bf16 autocast
    python scripts/bench_cdc.py --ckpt run/checkpoints/last.ckpt
    python scripts/bench_cdc.py --size tiny --steps 1 3   # CPU sanity run (the smoke model)

The paper's anchor (RTX A6000, Kodak): 0.015 s at 1 step, 1.04 s at 17 steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.base import load_codec
from modules.cdc import CDCModule

#: network sizes: the paper's, and the smoke preset's (configs/debug/model/smoke/cdc.yaml)
SIZES = {"full": {}, "tiny": {"dim": 8, "dim_mults": [1, 2, 2, 2, 2, 2], "compressor_dim": 8}}


class UNetTimer:
    """Accumulates the wall time of every U-Net call (synchronising the device around it)."""

    def __init__(self, unet: torch.nn.Module, device: torch.device) -> None:
        self.device, self.seconds, self.calls, self._start = device, 0.0, 0, 0.0
        unet.register_forward_pre_hook(self._before)
        unet.register_forward_hook(self._after)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _before(self, *args) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _after(self, *args) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="CDC checkpoint (default: full-size model, random weights)")
    parser.add_argument("--prediction", default="x", choices=["x", "epsilon"])
    parser.add_argument("--size", default="full", choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="U-Net under bf16 autocast")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 17, 65])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.ckpt:
        codec = load_codec(args.ckpt, map_location=device)
    else:
        torch.manual_seed(0)
        codec = CDCModule(prediction=args.prediction, **SIZES[args.size]).to(device).eval()
        codec.update(force=True)
    timer = UNetTimer(codec.unet, device)
    x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0))
    autocast = torch.autocast(device.type, torch.bfloat16) if args.bf16 else nullcontext()
    params = sum(p.numel() for p in codec.parameters() if p.requires_grad) / 1e6
    print(f"device={device} bf16={args.bf16} params={params:.1f}M image=768x512")
    print(f"{'steps':>5} {'decode s':>9} {'U-Net s':>8} {'U-Net share':>11} {'bytes':>7}")
    for steps in args.steps:
        codec.set_decoding(steps=steps, gamma=0.0, seed=0)
        with autocast:
            data = codec.compress(x)
            codec.decompress(data)  # warm-up
            timer.seconds, timer.calls, total = 0.0, 0, 0.0
            for _ in range(args.repeats):
                timer._sync()
                start = time.perf_counter()
                codec.decompress(data)
                timer._sync()
                total += time.perf_counter() - start
        assert timer.calls == steps * args.repeats
        decode, unet = total / args.repeats, timer.seconds / args.repeats
        print(f"{steps:>5} {decode:>9.3f} {unet:>8.3f} {unet / decode:>11.1%} {len(data):>7}")


if __name__ == "__main__":
    main()

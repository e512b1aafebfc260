"""Benchmark the foundation-diffusion codec: encode and decode seconds of a 768×512 image at the
predicted t (t + 1 UNet passes) and at respaced step counts, against CDC's decoder at 17 steps in
the same run, plus the trainable parameter count beside the paper's 36 M.

    python scripts/bench_foundation.py --device cuda               # SD 2.1-base sizes, random
    python scripts/bench_foundation.py --backbone-path weights/stable-diffusion-2-1-base
    python scripts/bench_foundation.py --steps 1 2 4 --no-full     # CPU: skip the t + 1 decode

The paper (RTX 3090, Kodak, encode + decode without entropy coding): 3.49 s against CDC's 6.87 s.
With random weights the untrained P_φ predicts its initial t = 76, i.e. 77 UNet passes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.cdc import CDCModule
from modules.diffusion import save_random_sd
from modules.foundation import FoundationModule
from scripts.bench_cdc import SIZES as CDC_SIZES
from scripts.bench_rdeic import timed

#: P_φ and entropy-model sizes per backbone size (the tiny one is the smoke preset's)
CODEC_SIZES = {
    "sd21": {},
    "tiny": {
        "estimator_widths": [16, 32],
        "hyper_channels": 16,
        "side_channels": 16,
        "context_channels": 16,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="sd21", choices=sorted(CODEC_SIZES))
    parser.add_argument("--backbone-path", help="real SD 2.1-base folder (default: random)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lmbda", type=float, default=5.0, help="encoding λ")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16], help="respaced")
    parser.add_argument(
        "--full",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also decode with one UNet pass per step (t + 1 passes)",
    )
    parser.add_argument("--cdc-steps", type=int, default=17)
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench_sd_") as folder:
        path = args.backbone_path or save_random_sd(folder, seed=0, size=args.size)
        torch.manual_seed(0)
        codec = FoundationModule(
            backbone={"name": "sd21_base", "path": str(path)},
            encode_lmbda=args.lmbda,
            **CODEC_SIZES[args.size],
        )
    codec = codec.to(device).eval()
    codec.update(force=True)
    estimator = sum(p.numel() for p in codec.estimator.parameters()) / 1e6
    entropy = sum(p.numel() for p in codec.entropy_model.parameters()) / 1e6
    frozen = sum(p.numel() for p in codec.backbone.parameters()) / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device={device} ({name}, {torch.get_num_threads()} threads) bf16="
        f"{device.type == 'cuda'} image=768x512 lmbda={args.lmbda}\n"
        f"trainable: P_phi {estimator:.2f}M + entropy model {entropy:.2f}M = "
        f"{estimator + entropy:.2f}M (paper: 36M); frozen SD UNet+VAE {frozen:.1f}M"
    )
    x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0)).to(device)

    encode = timed(lambda: codec.compress(x), device, args.repeats)
    data = codec.compress(x)
    with torch.no_grad():
        t = int(codec.side_parameters(codec.latent(x))[2])
    print(f"encode {encode:.3f} s, {len(data)} bytes, predicted t = {t}")
    print(f"{'decoder':>26} {'passes':>6} {'seconds':>8} {'enc+dec':>8}")
    rows = [(steps, min(steps, t + 1)) for steps in args.steps]
    if args.full:
        rows.append((None, t + 1))
    for steps, passes in rows:
        codec.set_decoding(steps=steps)
        stream = codec.compress(x)
        seconds = timed(lambda s=stream: codec.decompress(s), device, args.repeats)
        label = "foundation, t + 1 passes" if steps is None else f"foundation, {steps} respaced"
        print(f"{label:>26} {passes:>6} {seconds:>8.3f} {encode + seconds:>8.3f}")

    torch.manual_seed(0)
    cdc_size = CDC_SIZES["full" if args.size == "sd21" else "tiny"]  # tiny with the tiny SD
    cdc = CDCModule(prediction="x", decode_steps=args.cdc_steps, **cdc_size).to(device).eval()
    cdc.update(force=True)
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        cdc_encode = timed(lambda: cdc.compress(x), device, args.repeats)
        stream = cdc.compress(x)
        seconds = timed(lambda: cdc.decompress(stream), device, args.repeats)
    label = f"CDC (x), {args.cdc_steps} DDIM steps"
    print(f"{label:>26} {args.cdc_steps:>6} {seconds:>8.3f} {cdc_encode + seconds:>8.3f}")


if __name__ == "__main__":
    main()

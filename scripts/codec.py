"""Command-line codec: compress an image to a bitstream file and back, with any checkpoint.

    python scripts/codec.py compress   --ckpt C --input img.png --output img.bin [--lmbda 10]
    python scripts/codec.py decompress --ckpt C --input img.bin --output rec.png

`--lmbda` is the rate of a variable-rate codec (the foundation codec's encoding option λ); the
decoder reads everything it needs from the stream.

Errors (missing or unreadable files, bad streams) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torchvision.utils import save_image

from datamodules import ImageLoadError, load_rgb
from modules.base import load_codec
from modules.entropy import BitstreamError
from modules.metrics import quantize_8bit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["compress", "decompress"])
    parser.add_argument("--ckpt", required=True, help="codec checkpoint (.ckpt)")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--lmbda", type=float, help="compress: rate-distortion weight λ of a variable-rate codec"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Execute one command; returns a one-line report."""
    if not args.input.is_file():
        raise FileNotFoundError(f"input not found: {args.input}")
    if args.lmbda is not None and args.command != "compress":
        raise ValueError("--lmbda is an encoding option; decompress needs none")
    codec = load_codec(args.ckpt, map_location=args.device)
    if args.lmbda is not None:
        codec.set_encoding(lmbda=args.lmbda)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "compress":
        image = torch.from_numpy(load_rgb(args.input)).permute(2, 0, 1)
        data = codec.compress(image.float().div(255).unsqueeze(0))
        args.output.write_bytes(data)
        height, width = image.shape[-2:]
        return f"{args.output}: {len(data)} bytes, {8 * len(data) / (height * width):.4f} bpp"
    decoded = codec.decompress(args.input.read_bytes())
    save_image(quantize_8bit(decoded) / 255, args.output)
    return f"{args.output}: {decoded.shape[-1]}x{decoded.shape[-2]} image"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except (BitstreamError, ImageLoadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line codec: compress images to bitstream files and back, with any checkpoint.

    python scripts/codec.py compress   --ckpt C --input img.png --output img.bin [--steps 5 ...]
    python scripts/codec.py compress   --ckpt C --input img.png --output img.bin --lmbda 10
    python scripts/codec.py decompress --ckpt C --input img.bin --output rec.png
    python scripts/codec.py compress   --ckpt C --input photos/ --output streams/   # folder mode

Any further `--<option> <value>` is a decoding option of the method, by the names `eval.py`'s
`decoding=` uses (CDC: --steps --gamma --seed; RDEIC: --steps --guidance --seed). The encoder
writes them into the stream, so `decompress` takes none: it decodes with the stream's settings.
`--lmbda` is the rate of a variable-rate codec (the foundation codec's encoding option λ).
A folder input codes every image (or every .bin file) under it with the model loaded once,
keeping the sub-folders. Each file's report line has its size, rate and coding seconds.

Inputs and outputs are checked before the model loads. Errors (missing or unreadable files, bad
streams, options the method does not have) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml
from torchvision.utils import save_image

import modules.entropy.bitstream as bitstream
from datamodules import list_items, load_rgb
from datamodules.sources import IMAGE_EXTENSIONS
from modules.base import CodecModule, load_codec
from modules.entropy import Bitstream
from modules.evaluation import timed_call
from modules.metrics import quantize_8bit
from modules.utils import ConfigError, one_line, resolve_device, user_errors

#: formats a decoded image may be written in (lossless: the decoder's pixels, exactly)
OUTPUT_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".ppm")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The CLI's own arguments and the method's coding options (`--<name> <value>` pairs)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Further --<option> <value> pairs are the method's decoding options.",
    )
    parser.add_argument("command", choices=["compress", "decompress"])
    parser.add_argument("--ckpt", required=True, help="codec checkpoint (.ckpt)")
    parser.add_argument("--input", required=True, type=Path, help="a file or a folder")
    parser.add_argument("--output", required=True, type=Path, help="a file or a folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<index>")
    parser.add_argument(
        "--lmbda", type=float, help="compress: rate-distortion weight λ of a variable-rate codec"
    )
    parser.add_argument("--backbone-path", help="folder of the frozen backbone (RDEIC)")
    parser.add_argument(
        "--weights-dir", default="weights", help="where the checkpoint's backbone is looked for"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=bitstream.MAX_IMAGE_PIXELS,
        help="largest image (H·W) a stream may claim; 0: no limit (default %(default)s)",
    )
    args, rest = parser.parse_known_args(argv)
    return args, coding_options(parser, rest)


def coding_options(parser: argparse.ArgumentParser, tokens: list[str]) -> dict[str, Any]:
    """`--name value` / `--name=value` pairs -> {name: YAML-parsed value}."""
    options: dict[str, Any] = {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) == 2:
            parser.error(f"unexpected argument {token!r}")
        name, has_value, value = token[2:].partition("=")
        if not has_value:
            if not tokens or tokens[0].startswith("--"):
                parser.error(f"option --{name} needs a value")
            value = tokens.pop(0)
        options[name.replace("-", "_")] = yaml.safe_load(value)
    return options


def jobs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(input, output) file pairs, checked before any model is loaded."""
    source, target = args.input, args.output
    compress = args.command == "compress"
    if source.is_dir():
        if target.is_file():
            raise ConfigError(f"--input {source} is a folder, so --output must be one too")
        if compress:
            items = list_items({"source": "folder", "root": str(source)})
            return [(item.frames[0], target / f"{item.name}.bin") for item in items]
        streams = sorted(source.rglob("*.bin"))
        if not streams:
            raise FileNotFoundError(f"no .bin files under {source}")
        return [
            (path, (target / path.relative_to(source)).with_suffix(".png")) for path in streams
        ]
    if not source.is_file():
        raise FileNotFoundError(f"input not found: {source}")
    if target.is_dir():
        target = target / (source.stem + (".bin" if compress else ".png"))
    suffix = target.suffix.lower()
    if compress and suffix in IMAGE_EXTENSIONS:
        raise ConfigError(f"--output {target} would hold a bitstream, not an image; use .bin")
    if not compress and suffix not in OUTPUT_EXTENSIONS:
        raise ConfigError(
            f"--output {target} has no lossless image extension; use one of "
            f"{', '.join(OUTPUT_EXTENSIONS)}"
        )
    return [(source, target)]


def compress_file(codec: CodecModule, source: Path, target: Path) -> tuple[str, float]:
    """Code one image file into a stream file; returns (report line, encode seconds)."""
    image = torch.from_numpy(load_rgb(source)).permute(2, 0, 1)
    data, seconds = timed_call(codec.device, codec.compress, image.float().div(255)[None])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    bpp = 8 * len(data) / (image.shape[-2] * image.shape[-1])
    return f"{target}: {len(data)} bytes, {bpp:.4f} bpp, encode {seconds:.3f} s", seconds


def decompress_file(codec: CodecModule, source: Path, target: Path) -> tuple[str, float]:
    """Decode one stream file into a PNG (or other lossless) image; returns (line, seconds)."""
    decoded, seconds = timed_call(codec.device, codec.decompress, source.read_bytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    save_image(quantize_8bit(decoded) / 255, target)
    width, height = decoded.shape[-1], decoded.shape[-2]
    return f"{target}: {width}x{height} image, decode {seconds:.3f} s", seconds


def run(args: argparse.Namespace, options: dict[str, Any]) -> list[str]:
    """Execute one command; returns the report lines."""
    bitstream.MAX_IMAGE_PIXELS = args.max_pixels or None
    pairs = jobs(args)
    if args.command == "compress" and len(pairs) == 1:
        load_rgb(pairs[0][0])  # an unreadable image fails before the model loads
    if args.command == "decompress":
        if args.lmbda is not None:
            raise ConfigError("--lmbda is an encoding option; decompress needs none")
        if options:
            names = ", ".join(f"--{name}" for name in options)
            raise ConfigError(
                f"decompress takes no coding options ({names}): the encoder wrote its settings "
                "into the stream"
            )
        if len(pairs) == 1:
            Bitstream.from_bytes(pairs[0][0].read_bytes())  # a bad stream fails before loading
    device = resolve_device(args.device)
    start = time.perf_counter()
    codec = load_codec(
        args.ckpt,
        map_location=device,
        backbone_path=args.backbone_path,
        weights_dir=args.weights_dir,
    )
    codec.set_decoding(**options)
    if args.lmbda is not None:
        codec.set_encoding(lmbda=args.lmbda)
    loaded = time.perf_counter() - start
    lines = [f"{args.ckpt}: {type(codec).__name__} on {device}, loaded in {loaded:.1f} s"]
    code = compress_file if args.command == "compress" else decompress_file
    seconds = []
    for source, target in pairs:
        line, elapsed = code(codec, source, target)
        lines.append(line)
        seconds.append(elapsed)
    if len(seconds) > 1:
        spread = statistics.stdev(seconds)
        lines.append(
            f"{len(seconds)} files, {args.command} {statistics.mean(seconds):.3f} ± {spread:.3f} s"
            " per file"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    try:
        print("\n".join(run(args, options)))
    except user_errors() as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

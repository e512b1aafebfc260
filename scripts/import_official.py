"""Import an official released checkpoint into a checkpoint of this repository.

    python scripts/import_official.py cdc   --src x_param_b0.0032_rho0.9.pt --out cdc_x.ckpt
    python scripts/import_official.py rdeic --src rdeic_2_step2.ckpt --out rdeic_l2.ckpt \\
        --backbone-path weights/stable-diffusion-2-1-base
    python scripts/import_official.py elic --src ELIC_0008.pth.tar --out elic.ckpt --lmbda 0.008

The output loads with `eval.py ckpt_path=...`, `scripts/codec.py --ckpt ...` and `init_from=...`
like any trained checkpoint. The width options default to the released models' (the official
test scripts); they exist for files of other widths. Errors print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.official import OfficialCheckpointError, import_official
from modules.utils import one_line, user_errors


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(",", " ").split()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    methods = parser.add_subparsers(dest="method", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--src", required=True, type=Path, help="the official file")
    common.add_argument("--out", required=True, type=Path, help="checkpoint to write (.ckpt)")
    common.add_argument(
        "--allow-pickle",
        action="store_true",
        help="unpickle Python objects besides tensors (trusted files only)",
    )

    cdc = methods.add_parser("cdc", parents=[common], help="CDC (buggyyang/CDC_compression)")
    cdc.add_argument("--weights", choices=["ema", "model"], help="default: ema for X, model for ε")
    cdc.add_argument("--dim", type=int, default=64)
    cdc.add_argument("--dim-mults", type=_ints, default=[1, 2, 3, 4, 5, 6])
    cdc.add_argument("--compressor-dim", type=int, default=64)
    cdc.add_argument("--rho", type=float, help="default: 0.9 if it has LPIPS, else 0")
    cdc.add_argument("--decode-steps", type=int, help="default: 17 (X), 500 (ε)")
    cdc.add_argument("--decode-gamma", type=float, help="default: 0.8 for ρ > 0, else 0")
    cdc.add_argument("--eps-sampler", choices=["official", "matched"], default="official")
    cdc.add_argument("--weights-dir", default="weights", help="LPIPS weights for fine-tuning")

    rdeic = methods.add_parser("rdeic", parents=[common], help="RDEIC (huai-chang/RDEIC)")
    rdeic.add_argument("--lmbda", type=float, help="default: from the name rdeic_<λ>_step<n>")
    rdeic.add_argument("--fixed-steps", type=int, help="default: from the name")
    rdeic.add_argument("--backbone", choices=["sd21_base", "tiny_sd"], default="sd21_base")
    rdeic.add_argument("--backbone-path", default="weights/stable-diffusion-2-1-base")
    rdeic.add_argument("--channels", type=int, default=256)
    rdeic.add_argument("--groups", type=_ints, default=[8, 8, 8, 8, 16, 16, 32, 32, 64, 64])
    rdeic.add_argument("--num-codes", type=int, default=16384)
    rdeic.add_argument("--hint-channels", type=int, default=256)
    rdeic.add_argument("--control-ratio", type=float, default=0.2)
    rdeic.add_argument("--weights-dir", default="weights", help="LPIPS weights for fine-tuning")

    elic = methods.add_parser("elic", parents=[common], help="ELiC re-implementation")
    elic.add_argument("--lmbda", type=float, help="λ of the release (not in the file)")
    elic.add_argument("--N", type=int, default=192)
    elic.add_argument("--M", type=int, default=320)
    elic.add_argument("--groups", type=_ints, default=[16, 16, 32, 64, 192])
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> dict:
    """The method's `convert` options from the parsed arguments."""
    skip = {"method", "src", "out", "allow_pickle", "backbone_path"}
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.method == "rdeic":
        path = None if args.backbone == "tiny_sd" else args.backbone_path
        options["backbone"] = {"name": args.backbone, "path": path}
    return options


def run(args: argparse.Namespace) -> str:
    """Import one file; returns a one-line report."""
    codec = import_official(
        args.method, args.src, args.out, allow_pickle=args.allow_pickle, **options_of(args)
    )
    trainable = sum(p.numel() for p in codec.parameters() if p.requires_grad)
    return (
        f"{args.out}: {type(codec).__name__} from {args.src.name} "
        f"({trainable / 1e6:.2f} M parameters, decoding {codec.decoding or 'fixed'})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except (*user_errors(), OfficialCheckpointError) as exc:  # not internal bugs
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

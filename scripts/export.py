"""Export a training checkpoint as a deployable one: `python scripts/export.py CKPT --out DIR`.

Writes `<DIR>/<name>-<sha256 prefix>.ckpt` holding what `modules.base.load_codec` (and so
`eval.py` and `scripts/codec.py`) needs and nothing else: the weights (the EMA weights where
training kept an EMA, as every checkpoint's state_dict does), the entropy coders' CDF tables built
by `update(force=True)`, the hyper-parameters, the codec class and the record of the frozen
backbone the codec needs (its hub id and identity; its weights are never included). Optimizer
and scheduler states, loops, callbacks and the online EMA weights are left out. As CompressAI's
`update_model` names its files, the suffix is the first 8 hex digits of the file's SHA-256, so
`sha256sum` checks a downloaded copy.

    python scripts/export.py logs/train/elic_l0.032/<run>/checkpoints/last.ckpt --out release
    python scripts/export.py rdeic.ckpt --name rdeic_l2 --backbone-path weights/sd21 --out release

Errors (missing or unreadable checkpoint, missing backbone) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.base import codec_checkpoint, load_codec
from modules.utils import experiment_name_of, one_line, user_errors

#: hex digits of the SHA-256 in the file name (CompressAI's and torch.hub's convention)
HASH_PREFIX = 8


def export(
    ckpt_path: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    backbone_path: str | None = None,
    weights_dir: str | None = None,
) -> Path:
    """Write the deployable checkpoint of `ckpt_path` into `out_dir`; returns its path."""
    codec = load_codec(ckpt_path, backbone_path=backbone_path, weights_dir=weights_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".tmp", delete=False) as f:
        torch.save(codec_checkpoint(codec), f)
        temporary = Path(f.name)
    temporary.chmod(0o644)  # a release file, not a private temporary one
    digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
    stem = name or experiment_name_of(str(ckpt_path))
    path = out_dir / f"{stem}-{digest[:HASH_PREFIX]}.ckpt"
    temporary.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="training checkpoint (.ckpt)")
    parser.add_argument("--out", default="release", help="output folder (default %(default)s)")
    parser.add_argument("--name", help="file name stem (default: the checkpoint's experiment)")
    parser.add_argument("--backbone-path", help="folder of the frozen backbone (RDEIC)")
    parser.add_argument("--weights-dir", default="weights", help="where it is looked for")
    args = parser.parse_args(argv)
    try:
        path = export(args.ckpt, args.out, args.name, args.backbone_path, args.weights_dir)
    except user_errors() as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    size = path.stat().st_size / 2**20
    print(f"{path}: {size:.1f} MiB (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

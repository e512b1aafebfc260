"""Benchmark the shared space-channel codec against CompressAI's own Elic2022Official.

Both codecs hold the same weights (CompressAI's model shares our networks); each sample
photo is padded to a multiple of 64 and coded by both. Prints per-image compress/decompress
seconds of the latent codec alone and of the whole codec, the time ratios, the byte counts and
real vs estimated bpp.

    python scripts/bench_entropy.py                      # full-size ELIC, random weights
    python scripts/bench_entropy.py --ckpt elic.ckpt     # trained weights of one of our runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from compressai.models import Elic2022Official

from datamodules import EvalImages, list_items
from modules.base import bits_per_pixel, load_codec, pad_to_multiple
from modules.elic import ELICModule


def build_pair(ckpt: str | None, seed: int) -> tuple[Elic2022Official, ELICModule]:
    """Our ELICModule (from `ckpt`, else random) and a CompressAI Elic2022Official sharing its
    networks module for module; both with CDF tables built."""
    torch.manual_seed(seed)
    ours = load_codec(ckpt) if ckpt else ELICModule(lmbda=0.032)
    hp = ours.hparams
    reference = Elic2022Official(N=hp.N, M=hp.M, groups=list(hp.groups))
    reference.g_a, reference.g_s = ours.g_a, ours.g_s
    hyper = reference.latent_codec
    hyper.hyper = hyper.latent_codec["hyper"] = ours.latent_codec.hyper
    scctx, groups = ours.latent_codec.y, hyper.latent_codec["y"]
    groups.channel_context = scctx.channel_context
    for k in range(len(hp.groups)):
        groups.latent_codec[f"y{k}"].context_prediction = scctx.spatial_context[k]
        groups.latent_codec[f"y{k}"].entropy_parameters = scctx.param_aggregation[k]
    reference.eval().update(force=True)
    ours.eval().update(force=True)
    return reference, ours


def timed(repeats: int, fn, *args):
    """(result of the last call, median seconds over `repeats` calls of fn(*args))."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def bench_image(
    reference: Elic2022Official, ours: ELICModule, image: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Seconds, bytes and bpp of one uint8 image through both codecs."""
    height, width = image.shape[-2:]
    x = pad_to_multiple(image.float().div(255).unsqueeze(0), 64)
    y = ours.g_a(x)
    cai_lc, lc_cai = timed(repeats, reference.latent_codec.compress, y)
    our_lc, lc_ours = timed(repeats, ours.latent_codec.compress, y)
    _, lcd_cai = timed(
        repeats, reference.latent_codec.decompress, cai_lc["strings"], cai_lc["shape"]
    )
    _, lcd_ours = timed(repeats, ours.latent_codec.decompress, our_lc["strings"], our_lc["shape"])
    cai, c_cai = timed(repeats, reference.compress, x)
    _, cd_cai = timed(repeats, reference.decompress, cai["strings"], cai["shape"])
    data, c_ours = timed(repeats, ours.compress, image.float().div(255))
    _, cd_ours = timed(repeats, ours.decompress, data)
    bpp_est = bits_per_pixel(ours(x)["likelihoods"], height * width)
    return {
        "lc_cai": lc_cai, "lc_ours": lc_ours, "lcd_cai": lcd_cai, "lcd_ours": lcd_ours,
        "c_cai": c_cai, "c_ours": c_ours, "cd_cai": cd_cai, "cd_ours": cd_ours,
        "bytes_cai": sum(len(s[0]) for s in cai["strings"]), "bytes_ours": len(data),
        "bpp": 8 * len(data) / (height * width), "bpp_est": float(bpp_est),
    }  # fmt: skip


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="ELIC checkpoint of this repository (default: random)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reference, ours = build_pair(args.ckpt, args.seed)
    print(f"threads={torch.get_num_threads()} weights={'checkpoint' if args.ckpt else 'random'}")
    print(
        f"{'image':<22}{'size':>11} | latent enc/dec s: CompressAI, ours | "
        "codec enc/dec s: CompressAI, ours | bytes: CompressAI strings, ours all | bpp real, est"
    )
    rows = []
    for item in EvalImages(list_items({"source": "sample"})):
        if item is None:
            continue
        r = bench_image(reference, ours, item["image"], args.repeats)
        rows.append(r)
        height, width = item["image"].shape[-2:]
        print(
            f"{item['name']:<22}{f'{width}x{height}':>11} | "
            f"{r['lc_cai']:6.3f}/{r['lcd_cai']:6.3f} {r['lc_ours']:6.3f}/{r['lcd_ours']:6.3f} | "
            f"{r['c_cai']:6.3f}/{r['cd_cai']:6.3f} {r['c_ours']:6.3f}/{r['cd_ours']:6.3f} | "
            f"{r['bytes_cai']:8d} {r['bytes_ours']:6d} | {r['bpp']:.4f} {r['bpp_est']:.4f}"
        )

    def ratio(cai: str, ours_key: str) -> float:
        return sum(r[cai] for r in rows) / sum(r[ours_key] for r in rows)

    print(
        "time CompressAI / ours (>1: ours faster): latent codec "
        f"compress {ratio('lc_cai', 'lc_ours'):.2f}x, "
        f"decompress {ratio('lcd_cai', 'lcd_ours'):.2f}x;"
        f" whole codec compress {ratio('c_cai', 'c_ours'):.2f}x, "
        f"decompress {ratio('cd_cai', 'cd_ours'):.2f}x; "
        f"real/estimated bpp {sum(r['bpp'] for r in rows) / sum(r['bpp_est'] for r in rows):.4f}"
    )


if __name__ == "__main__":
    main()

"""Benchmark CorrDiff coding: encode/decode seconds of one 768×512 image at 8 DDIM steps, split
into ELIC coding, μ_θ passes and the γ search (LPIPS-VGG calls); side-information bytes against the
ELIC payload; and the two γ searches' LPIPS-VGG on the sample photos for equal LPIPS budgets.

    python scripts/bench_corrdiff.py                      # full-size networks, random weights
    python scripts/bench_corrdiff.py --device cuda --repeats 3
    python scripts/bench_corrdiff.py --ckpt run/checkpoints/last.ckpt --weights-dir weights
    python scripts/bench_corrdiff.py --size tiny --steps 2     # logic check: the smoke sizes

Without --weights-dir the perceptual networks are untrained (seeded): their cost is the real one,
their values are not; the search comparison says which it used.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import skimage.data
import torch
import torch.nn.functional as F

from modules.base import load_codec, pad_to_multiple
from modules.corrdiff import PAPER_PARAMETERS, CorrDiffModule
from modules.entropy import Bitstream
from scripts.bench_cdc import UNetTimer as ModuleTimer

#: random-weight model sizes: the paper's, and the smoke run's tiny networks
SIZES = {
    "full": {},
    "tiny": {
        "elic": {"N": 16, "M": 32, "groups": [4, 4, 8, 16]},
        "unet": {"channels": 8, "norm_groups": 4, "layers_per_block": 1},
    },
}
#: the operating range of the paper's CLIC professional examples (App. D) and around it
PAPER_BPP = (0.05, 0.137, 0.264, 0.5)
SAMPLE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)


class CallTimer:
    """Wraps a bound method of `owner`, accumulating its wall time (device synchronised)."""

    def __init__(self, owner: object, name: str, device: torch.device) -> None:
        self.device, self.seconds, self.calls = device, 0.0, 0
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            result = method(*args, **kwargs)
            self._sync()
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return result

        setattr(owner, name, timed)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def bench_coding(
    codec: CorrDiffModule, device: torch.device, repeats: int, steps: int, methods: list[str]
) -> None:
    """Seconds of compress and decompress, split into μ_θ passes, γ search and the rest (ELIC
    analysis/synthesis and entropy coding, the sampler's arithmetic)."""
    mu = ModuleTimer(codec.unet, device)
    search = CallTimer(codec, "search_gamma", device)
    codec.set_decoding(steps=steps, mode="corrected", seed=0)
    x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0)).to(device)

    def measure(run) -> tuple[float, float, float, int, int, object]:
        total = mu_s = search_s = 0.0
        for _ in range(repeats):
            mu.seconds = search.seconds = 0.0
            mu.calls = search.calls = 0
            mu._sync()
            start = time.perf_counter()
            result = run()
            mu._sync()
            total += time.perf_counter() - start
            mu_s, search_s = mu_s + mu.seconds, search_s + search.seconds
        lpips_calls = search.calls * codec.encoding["evaluations"]
        return total / repeats, mu_s / repeats, search_s / repeats, mu.calls, lpips_calls, result

    header = ("method", "", "total s", "ELIC+rest s", "μ_θ s", "γ search s", "μ_θ", "LPIPS")
    print("{:>9} {:>6} {:>8} {:>11} {:>7} {:>10} {:>5} {:>6}".format(*header))
    for method in methods:
        codec.set_encoding(method=method)
        if device.type == "cuda":
            codec.decompress(codec.compress(x))  # warm-up: kernels, cuDNN
        encode = measure(partial(codec.compress, x))
        data = encode[-1]
        decode = measure(partial(codec.decompress, data))
        for part, (total, mu_s, search_s, mu_calls, lpips_calls, _) in (
            ("encode", encode),
            ("decode", decode),
        ):
            rest = total - mu_s - search_s
            print(
                f"{method:>9} {part:>6} {total:>8.2f} {rest:>11.2f} {mu_s:>7.2f}"
                f" {search_s:>10.2f} {mu_calls:>5} {lpips_calls:>6}"
            )
    stream = Bitstream.from_bytes(data)
    payload, side = sum(len(s) for s in stream.strings), len(stream.side)
    pixels = 512 * 768
    print(
        f"\nside information: {side} bytes ({steps} float16 γ, steps u16, seed u32) ="
        f" {8 * side / pixels:.5f} bpp; container header + CRC {len(data) - payload - side}"
        f" bytes; this (random-weight) model's ELIC payload {payload} bytes"
    )
    for bpp in PAPER_BPP:
        total = bpp * pixels / 8
        print(
            f"  a {bpp:.3f}-bpp stream of 768×512 is {total:6.0f} bytes:"
            f" γ's + seed {side / total:6.2%}"
        )


def search_problem(name: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sample photo x0, a sharp but noisy μ (texture) and a blurred D, all in [−1, 1]."""
    image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    image = pad_to_multiple(image[..., :size, :size], 16)
    x0 = 2 * image - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    mu = (x0 + 0.3 * noise).clamp(-1, 1)
    blurred = F.avg_pool2d(F.pad(x0, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return x0, mu, blurred


def compare_searches(codec: CorrDiffModule, device: torch.device, budgets: list[int], size: int):
    pretrained = codec.hparams.perceptual_pretrained
    print(
        f"\nγ search on {len(SAMPLE_PHOTOS)} sample photos (≤{size}² crops), LPIPS-VGG"
        f" {'pretrained' if pretrained else 'with an UNTRAINED seeded backbone'};"
        " μ = x0 + 0.3·N(0, I), D = 5×5 box blur; mean LPIPS-VGG (γ = 1: pure diffusion)"
    )
    problems = [tuple(t.to(device) for t in search_problem(n, size)) for n in SAMPLE_PHOTOS]
    with torch.no_grad():
        at_one = [float(codec._lpips_vgg(mu, x0)) for x0, mu, _ in problems]
    print(f"  γ = 1: {sum(at_one) / len(at_one):.4f}")
    for evaluations in budgets:
        cells = []
        for method in ("gradient", "bounded"):
            codec.set_encoding(method=method, evaluations=evaluations)
            values, start = [], time.perf_counter()
            for x0, mu, x_e in problems:
                gamma = codec.search_gamma(x0, mu, x_e).half().float()
                with torch.no_grad():
                    mixed = gamma.view(-1, 1, 1, 1) * mu + (1 - gamma.view(-1, 1, 1, 1)) * x_e
                    values.append(float(codec._lpips_vgg(mixed, x0)))
            seconds = (time.perf_counter() - start) / len(problems)
            cells.append(f"{method} {sum(values) / len(values):.4f} ({seconds:.2f} s/image)")
        print(f"  {evaluations:>2} LPIPS calls: " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="CorrDiff checkpoint (default: full size, random weights)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="random model size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights-dir", help="pretrained LPIPS-VGG (default: untrained)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--evaluations", type=int, help="LPIPS calls per step (default: model's)")
    parser.add_argument("--methods", nargs="+", default=["gradient", "bounded"])
    parser.add_argument("--budgets", type=int, nargs="+", default=[3, 5, 10, 20])
    parser.add_argument("--search-size", type=int, default=256)
    parser.add_argument("--skip-coding", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.ckpt:
        codec = load_codec(args.ckpt, map_location=device)
    else:
        torch.manual_seed(0)
        codec = CorrDiffModule(
            **SIZES[args.size],
            elic_random_init=True,
            perceptual_pretrained=args.weights_dir is not None,
            weights_dir=args.weights_dir,
        )
        codec = codec.to(device).eval()
        codec.update(force=True)
    if args.evaluations:
        codec.set_encoding(evaluations=args.evaluations)
    counts = codec.parameter_counts()
    print(
        f"device={device} threads={torch.get_num_threads()} parameters: "
        + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())
        + f" (paper {PAPER_PARAMETERS / 1e6:.2f} M)"
    )
    if not args.skip_coding:
        bench_coding(codec, device, args.repeats, args.steps, args.methods)
    compare_searches(codec, device, args.budgets, args.search_size)


if __name__ == "__main__":
    main()

"""Benchmark RDEIC: decode seconds of a 768×512 image at 2 and 5 steps (with and without detail
guidance) against a DiffEIC-style 50-step decode from pure noise with the same networks, and the
time and peak memory of a stage-1 and a stage-2 training step.

    python scripts/bench_rdeic.py --size sd21 --device cuda     # SD 2.1-base sizes, random weights
    python scripts/bench_rdeic.py --backbone-path weights/stable-diffusion-2-1-base
    python scripts/bench_rdeic.py --size tiny                   # CPU sanity run

The paper's claim (Kodak): decoding ≈12× (2 steps) and ≈7× (5 steps) faster than DiffEIC's 50.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from modules.diffusion import respaced_ddpm_sample, respaced_timesteps, save_random_sd
from modules.entropy import Bitstream
from modules.rdeic import RDEICModule

#: codec sizes per backbone size (the tiny one is the smoke preset's)
CODEC_SIZES = {
    "sd21": {},
    "tiny": {"channels": 32, "groups": [4, 4, 8, 16], "num_codes": 64, "hint_channels": 16},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds of `fn()` over `repeats` runs after one warm-up run."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def diffeic_style_decode(codec: RDEICModule, data: bytes, steps: int = 50) -> torch.Tensor:
    """Entropy decoding, then `steps` respaced DDPM steps over all 1000 timesteps from pure
    noise at t = 999 (DiffEIC's start) with the same UNet + control, then the VAE decoder."""
    stream = Bitstream.from_bytes(data, method=codec.method, fingerprint=codec.model_fingerprint)
    with codec._coding_mode():  # 768×512 needs no padding
        latent_size = (stream.height // 64, stream.width // 64)
        coded = codec.compressor.decompress([[s] for s in stream.strings], latent_size)
        generator = torch.Generator(codec.device).manual_seed(0)
        noise = torch.randn(coded["z_c"].shape, device=codec.device, generator=generator)
        timesteps = respaced_timesteps(steps, len(codec.backbone.alphas_cumprod))
        z0 = respaced_ddpm_sample(
            lambda z, t: codec._noise_prediction(z, t, coded["hint"]),
            noise,
            codec.backbone.alphas_cumprod,
            timesteps,
            generator=generator,
        )
        with codec._frozen_autocast():
            return (codec.backbone.decode(z0).float() + 1) / 2


def train_step(codec: RDEICModule, optimizer, x: torch.Tensor, stage: int) -> None:
    """One optimisation step of `stage` as the fp32 trainer runs it (the module puts the frozen
    SD networks under bf16 autocast on GPU itself)."""
    codec.hparams.initial_steps = 0
    codec.hparams.stage1_steps = 1 if stage == 1 else 0
    codec.train()
    out = codec(x)
    loss = codec.rd_loss(out, x)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="sd21", choices=sorted(CODEC_SIZES))
    parser.add_argument("--backbone-path", help="real SD 2.1-base folder (default: random)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--diffeic-steps", type=int, default=50)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda"

    with tempfile.TemporaryDirectory(prefix="bench_sd_") as folder:
        path = args.backbone_path or save_random_sd(folder, seed=0, size=args.size)
        torch.manual_seed(0)
        codec = RDEICModule(
            backbone={"name": "sd21_base", "path": str(path)},
            lpips_pretrained_backbone=False,
            **CODEC_SIZES[args.size],
        )
    codec = codec.to(device).eval()
    codec.update(force=True)
    trainable = sum(p.numel() for p in codec.parameters() if p.requires_grad) / 1e6
    frozen = sum(p.numel() for p in codec.backbone.parameters()) / 1e6
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if bf16 else 'CPU'}) "
        f"bf16={bf16} trainable={trainable:.1f}M frozen SD={frozen:.1f}M image=768x512"
    )
    x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0)).to(device)

    print(f"{'decoder':>24} {'seconds':>8} {'speed-up':>9}")
    data = codec.compress(x)
    baseline = timed(
        lambda: diffeic_style_decode(codec, data, args.diffeic_steps), device, args.repeats
    )
    print(f"{f'DiffEIC-style {args.diffeic_steps} steps':>24} {baseline:>8.3f} {1.0:>8.1f}×")
    for steps in (2, 5):
        for guidance in (1.0, 1.3):
            codec.set_decoding(steps=steps, guidance=guidance)
            data = codec.compress(x)
            seconds = timed(lambda d=data: codec.decompress(d), device, args.repeats)
            label = f"RDEIC {steps} steps, s={guidance}"
            print(f"{label:>24} {seconds:>8.3f} {baseline / seconds:>8.1f}×")
    codec.set_decoding(steps=2, guidance=1.0)

    if args.skip_training:
        return
    codec.setup("fit")
    optimizer = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=1e-5)
    print(f"{'training step':>24} {'seconds':>8} {'peak GiB':>9}")
    # stage 2 takes 256² crops of the 512² batch, as in training
    for stage, crop, fixed_steps in [(1, 512, None), (2, 512, 2), (2, 512, 5)]:
        if fixed_steps:
            codec.hparams.fixed_steps = fixed_steps
        batch = torch.rand(args.train_batch, 3, crop, crop, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(lambda b=batch, s=stage: train_step(codec, optimizer, b, s), device, 1)
        label = f"stage {stage}" + (f" ({fixed_steps} steps, 256²)" if fixed_steps else " (512²)")
        print(f"{label:>24} {seconds:>8.3f} {peak_memory_gib(device):>9.2f}")


if __name__ == "__main__":
    main()

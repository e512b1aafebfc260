"""Vector-quantised hyper-latent: a CVQ-VAE codebook and real coding of its indices."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor, nn

from .bitstream import BitstreamError
from .precision import entropy_fp32
from .rans import decoder_input

#: probability precision of CompressAI's rANS coder, in bits
RANS_PRECISION = 16
_PRIORS = ("uniform", "usage")


class VectorQuantizer(nn.Module):
    """Codebook of ``num_codes`` vectors of ``dim`` channels with online dead-code
    re-initialisation (CVQ-VAE [Zheng2023], as RDEIC's hyper-latent).

    Nearest code by L2 distance on the detached input, in fp32. The loss is
    ``beta·‖sg(e) − z‖² + ‖e − sg(z)‖²`` (means), plus in training mode a contrastive term
    on detached features that only moves the codebook. Every training-mode forward also
    updates ``usage`` (EMA of the codes' batch frequencies) and pulls each code ``i`` toward
    its closest batch feature by ``exp(−10·K·usage_i / (1 − usage_decay) − 1e−3)``, so that
    unused codes jump to the data and used ones stay put. Under ``torch.distributed`` these
    statistics are taken over the features of all processes, keeping the codebooks equal.

    Indices are coded one string per batch item: ``prior="uniform"`` writes ``ceil(log2 K)``
    bits per index (what a uniform-CDF arithmetic coder spends); ``prior="usage"`` codes them
    with CompressAI's rANS under the categorical prior in the ``cdf`` buffer, built from
    ``usage`` by :meth:`update`.

    [Zheng2023]: "Online Clustered Codebook", C. Zheng and A. Vedaldi, ICCV 2023.
    """

    def __init__(
        self,
        num_codes: int = 16384,
        dim: int = 256,
        beta: float = 0.25,
        usage_decay: float = 0.99,
        contrastive: bool = True,
        temperature: float = 0.07,
        prior: str = "uniform",
    ) -> None:
        super().__init__()
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
        # the rANS table needs a nonzero count for every code and for the coder's escape symbol
        max_codes = 2**RANS_PRECISION - 1 if prior == "usage" else 2**31
        if not 2 <= num_codes <= max_codes:
            raise ValueError(f"num_codes must be in [2, {max_codes}] for prior {prior!r}")
        if not 0 < usage_decay < 1:
            raise ValueError(f"usage_decay must be in (0, 1), got {usage_decay}")
        self.num_codes = num_codes
        self.dim = dim
        self.beta = beta
        self.usage_decay = usage_decay
        self.contrastive = contrastive
        self.temperature = temperature
        self.prior = prior
        #: bits per index of the fixed-length (uniform prior) code
        self.index_bits = (num_codes - 1).bit_length()

        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / num_codes, 1 / num_codes)
        self.register_buffer("usage", torch.zeros(num_codes))
        if prior == "usage":
            # quantised CDF of the K codes plus CompressAI's escape symbol
            self.register_buffer("cdf", torch.zeros(num_codes + 2, dtype=torch.int32))
            self.update()

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, prior={self.prior}"

    # ------------------------------------------------------------------ quantisation
    def forward(self, z: Tensor) -> dict[str, Any]:
        """Quantise ``z`` (B×dim×H×W).

        Returns ``z_q`` (the codes, with a straight-through gradient to ``z``; in value exactly
        ``lookup(indices)``), the codebook ``loss`` and the ``indices`` (B×H×W).
        """
        with entropy_fp32(z.device.type):
            z = z.float()
            features = _flatten(z)
            weight = self.codebook.weight
            if self.training:
                # the dead-code update below rewrites the codebook in place; the losses keep
                # the values they were computed with
                weight = weight.clone()
            with torch.no_grad():
                distances = _squared_distances(features, weight)
            indices = distances.argmin(dim=1)
            e = _unflatten(F.embedding(indices, weight), z.shape)
            loss = self.beta * F.mse_loss(z, e.detach()) + F.mse_loss(e, z.detach())
            if self.training:
                if self.contrastive:
                    loss = loss + self._contrastive_loss(features.detach(), weight)
                self._update_codebook(features.detach(), distances, indices)
            # z + sg(e − z), written so that its value is e bit for bit
            z_q = e.detach() + (z - z.detach())
        return {"z_q": z_q, "loss": loss, "indices": indices.view(z.shape[0], *z.shape[2:])}

    @torch.no_grad()
    def nearest(self, z: Tensor) -> Tensor:
        """Indices (B×H×W) of the codes nearest to ``z`` (B×dim×H×W); no state changes."""
        with entropy_fp32(z.device.type):
            distances = _squared_distances(_flatten(z.float()), self.codebook.weight)
        return distances.argmin(dim=1).view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: Tensor) -> Tensor:
        """The codes of ``indices`` (B×H×W) as a B×dim×H×W fp32 tensor."""
        e = F.embedding(indices.flatten(), self.codebook.weight)
        return _unflatten(e, (indices.shape[0], self.dim, *indices.shape[1:]))

    def _contrastive_loss(self, features: Tensor, weight: Tensor) -> Tensor:
        # Cross-entropy per code between its similarity (−squared L2) to its ≈N/K closest
        # features (mean, the positive) and to the farthest half of the features (negatives).
        similarity = -_squared_distances(features, weight)
        ranked = similarity.sort(dim=0).values
        n = features.shape[0]
        positive = ranked[-max(1, n // self.num_codes) :].mean(dim=0, keepdim=True)
        logits = torch.cat((positive, ranked[: n // 2])).t() / self.temperature
        return F.cross_entropy(logits, logits.new_zeros(self.num_codes, dtype=torch.long))

    @torch.no_grad()
    def _update_codebook(self, features: Tensor, distances: Tensor, indices: Tensor) -> None:
        if _world_size() > 1:
            features = _all_gather_rows(features)
            distances = _squared_distances(features, self.codebook.weight)
            indices = distances.argmin(dim=1)
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        self.usage.mul_(self.usage_decay).add_(
            counts / features.shape[0], alpha=1 - self.usage_decay
        )
        closest = features[distances.argmin(dim=0)]
        rate = torch.exp(-10 * self.num_codes * self.usage / (1 - self.usage_decay) - 1e-3)
        self.codebook.weight.lerp_(closest, rate[:, None])

    # ------------------------------------------------------------------ index coding
    @torch.no_grad()
    def update(self) -> None:
        """Rebuild the ``cdf`` buffer of the usage prior from ``usage`` (no-op for "uniform").

        Every code keeps at least one count of the coder's 2^16, so that any index stays
        codable; an all-zero ``usage`` gives the uniform prior.
        """
        if self.prior != "usage":
            return
        usage = self.usage.double().cpu().numpy()
        total = usage.sum()
        pmf = usage / total if total > 0 else np.full(self.num_codes, 1 / self.num_codes)
        counts = _quantize_pmf(np.append(pmf, 0.0), RANS_PRECISION)
        self.cdf.copy_(torch.from_numpy(np.concatenate(([0], np.cumsum(counts)))))

    def likelihoods(self, indices: Tensor) -> Tensor:
        """Probability the coder assigns to each index (B×1×H×W, fp32, no gradient), so that
        −log2 is its cost: 2^−ceil(log2 K) under the uniform prior (fixed-length code), the
        quantised frequency under the usage prior (the rANS cost without its 8-byte final state).
        """
        if self.prior == "uniform":
            return torch.full_like(indices, 2.0**-self.index_bits, dtype=torch.float32)[:, None]
        frequencies = (self.cdf[1:-1] - self.cdf[:-2]).float() / 2**RANS_PRECISION
        return frequencies[indices][:, None]

    def bits(self, indices: Tensor) -> Tensor:
        """Bits the coder spends on ``indices`` (B×H×W), per batch item (fp32, no gradient)."""
        return -torch.log2(self.likelihoods(indices)).flatten(1).sum(dim=1)

    def compress(self, indices: Tensor) -> list[bytes]:
        """Code ``indices`` (B×H×W) into one string per batch item."""
        if indices.dim() != 3 or indices.numel() == 0:
            raise ValueError(f"expected non-empty B×H×W indices, got {tuple(indices.shape)}")
        rows = indices.flatten(1).cpu().numpy().astype(np.int64)
        if rows.min() < 0 or rows.max() >= self.num_codes:
            raise ValueError(f"indices must be in [0, {self.num_codes})")
        if self.prior == "uniform":
            return [_pack_bits(row, self.index_bits) for row in rows]
        cdf = self.cdf.tolist()
        return [_rans_encode(_rans_symbols(row.tolist()), cdf) for row in rows]

    def decompress(self, strings: list[bytes], shape: tuple[int, int]) -> Tensor:
        """Decode one string per batch item into B×H×W indices of spatial ``shape``.

        A string that is not a valid code of H·W indices raises ``BitstreamError``.
        """
        height, width = (int(s) for s in shape)
        if height <= 0 or width <= 0 or not strings:
            raise ValueError(f"expected strings for a non-empty shape, got {shape}")
        n = height * width
        for string in strings:
            if not isinstance(string, bytes | bytearray):
                raise BitstreamError(f"expected bytes, got {type(string).__name__}")
        if self.prior == "uniform":
            rows = [self._decode_fixed_length(bytes(string), n) for string in strings]
        else:
            cdf = self.cdf.tolist()
            rows = [self._decode_rans(bytes(string), n, cdf) for string in strings]
        indices = torch.from_numpy(np.stack(rows)).to(self.codebook.weight.device)
        return indices.view(len(strings), height, width)

    def _decode_fixed_length(self, string: bytes, n: int) -> np.ndarray:
        num_bits = n * self.index_bits
        expected = math.ceil(num_bits / 8)
        if len(string) != expected:
            raise BitstreamError(
                f"VQ index string has {len(string)} bytes, {n} indices take {expected}"
            )
        bits = np.unpackbits(np.frombuffer(string, dtype=np.uint8))
        if bits[num_bits:].any():
            raise BitstreamError("VQ index string has nonzero padding bits")
        weights = 1 << np.arange(self.index_bits - 1, -1, -1, dtype=np.int64)
        values = bits[:num_bits].reshape(n, self.index_bits).astype(np.int64) @ weights
        if values.max() >= self.num_codes:
            raise BitstreamError(f"VQ index {values.max()} out of range [0, {self.num_codes})")
        return values

    def _decode_rans(self, string: bytes, n: int, cdf: list[int]) -> np.ndarray:
        m = len(_rans_symbols([0] * n))
        # CompressAI's encoder writes at most one 32-bit word per symbol, its final state
        # included; anything else cannot be a string of m symbols.
        if len(string) > 4 * m:
            raise BitstreamError(f"malformed rANS string of {len(string)} bytes for {n} indices")
        padded = decoder_input(string, m, f"{n} VQ indices")
        symbols = RansDecoder().decode_with_indexes(padded, [0] * m, [cdf], [len(cdf)], [0])
        values = np.asarray(symbols[:n], dtype=np.int64)
        if min(symbols) < 0 or max(symbols) >= self.num_codes or symbols[n:] != [0] * (m - n):
            raise BitstreamError("rANS string does not decode to VQ indices")
        # rANS coding is deterministic: a valid string is exactly the code of what it decodes to
        if _rans_encode(symbols, cdf) != string:
            raise BitstreamError("corrupted rANS string of VQ indices")
        return values


def _flatten(z: Tensor) -> Tensor:
    """B×C×H×W -> (B·H·W)×C."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _unflatten(rows: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """(B·H·W)×C -> contiguous B×C×H×W with the standard strides.

    `.contiguous()` would keep the permuted strides of size-1 dimensions (a 1×1 hyper-latent of
    a 64×64 image), and convolutions pick their kernel by the strides: the decoder's lookup and
    the encoder's forward would then compute the hyper parameters with different kernels.
    """
    b, c, h, w = shape
    return rows.view(b, h, w, c).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def _squared_distances(features: Tensor, codes: Tensor) -> Tensor:
    """N×K squared L2 distances by the expanded norm ‖f‖² + ‖e‖² − 2 f·e."""
    norms = features.square().sum(dim=1, keepdim=True) + codes.square().sum(dim=1)
    return torch.addmm(norms, features, codes.t(), alpha=-2)


def _quantize_pmf(pmf: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies summing to 2^precision, each at least 1, by largest remainders.

    Written by hand: CompressAI's ``pmf_to_quantized_cdf`` rescales by floor division and
    hands the deficit to the last (escape) symbol, which for 16384 codes takes a quarter of
    the mass (14.4 instead of 14 bits per index under a uniform prior).
    """
    budget = 2**precision - len(pmf)
    scaled = pmf / pmf.sum() * budget
    counts = np.floor(scaled).astype(np.int64)
    order = np.argsort(counts - scaled, kind="stable")  # largest fractional parts first
    counts[order[: budget - counts.sum()]] += 1
    return counts + 1


def _rans_symbols(indices: list[int]) -> list[int]:
    # CompressAI's encoder sizes its output buffer at one word per symbol, too small for the
    # two-word final state of a one-symbol message: those get a padding symbol 0.
    return [*indices, 0] if len(indices) == 1 else indices


def _rans_encode(symbols: list[int], cdf: list[int]) -> bytes:
    n = len(symbols)
    return RansEncoder().encode_with_indexes(symbols, [0] * n, [cdf], [len(cdf)], [0])


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Fixed-length code: ``bits`` bits per value, most significant first, zero-padded."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((values[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)).tobytes()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate the rows of ``x`` of every process (row counts may differ)."""
    world = _world_size()
    rows = torch.tensor([x.shape[0]], device=x.device)
    all_rows = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(all_rows, rows)
    counts = [int(r.item()) for r in all_rows]
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:count] for g, count in zip(gathered, counts, strict=True)])

"""Import of the official released checkpoints into checkpoints of this repository.

`import_official(method, src, out, **options)` reads an official file (CDC, RDEIC or the ELiC
re-implementation), maps every one of its keys onto this repository's module of that method
(an unknown key, a missing weight or a shape mismatch is an `OfficialCheckpointError`), runs what
the format needs after loading (CDC: the factorized prior's tail quantiles), builds the coder
tables and writes a checkpoint that `modules.base.load_codec`, `eval.py`, `scripts/codec.py` and
`init_from=` take like any trained one. The file formats and key maps are documented in each
method's submodule; `scripts/import_official.py` is the command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from modules.base import CodecModule, codec_checkpoint


class OfficialCheckpointError(ValueError):
    """An official file that cannot be imported; the message says what is wrong with it."""


#: a rename rule: a full-match pattern of official keys and the new key (a `re` template or a
#: function of the match)
Rule = tuple[str, str | Callable[[re.Match], str]]


def load_official_file(path: str | Path, allow_pickle: bool = False) -> Any:
    """The object stored in an official file, read on the CPU.

    Only tensors and plain containers are unpickled unless `allow_pickle` (arbitrary Python
    objects, e.g. in a full Lightning checkpoint, run code when loaded: allow them for trusted
    files only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:
        if not allow_pickle and "weights_only" in str(exc):
            raise OfficialCheckpointError(
                f"{path} holds pickled Python objects besides tensors; if you trust the file, "
                "pass --allow-pickle"
            ) from exc
        raise OfficialCheckpointError(
            f"{path} is not a readable PyTorch file ({type(exc).__name__}); it may be "
            "truncated or corrupted: download it again"
        ) from exc


def state_dict_of(obj: Any, *wrappers: str) -> dict[str, Tensor] | None:
    """The tensor dict in `obj` itself or under the first of `wrappers` it has, without a
    DataParallel "module." prefix; None if there is none."""
    if not isinstance(obj, Mapping):
        return None
    for key in wrappers:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return None
    if all(k.startswith("module.") for k in obj):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def rename(
    state: Mapping[str, Tensor], rules: Iterable[Rule]
) -> tuple[dict[str, Tensor], list[str]]:
    """Apply the first matching rule to every key; returns (renamed state, unmatched keys)."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    renamed: dict[str, Tensor] = {}
    unmatched = []
    for key, value in state.items():
        for pattern, target in compiled:
            match = pattern.fullmatch(key)
            if match:
                new = match.expand(target) if isinstance(target, str) else target(match)
                if new in renamed:
                    raise OfficialCheckpointError(f"two official keys map onto {new}")
                renamed[new] = value
                break
        else:
            unmatched.append(key)
    return renamed, unmatched


def refuse_unknown(keys: list[str], what: str) -> None:
    """Raise for official keys no rule knows (shown: the first few)."""
    if keys:
        shown = ", ".join(sorted(keys)[:8])
        raise OfficialCheckpointError(
            f"{len(keys)} key(s) of the {what} file have no place in this repository's model "
            f"({shown}{', …' if len(keys) > 8 else ''}); it is not a file of the supported layout"
        )


def coder_buffers(model: nn.Module) -> set[str]:
    """State keys of the CompressAI entropy models' buffers (CDF tables, scale tables, bounds,
    quantile targets): they come from the model and `update()`, not from an official file."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, EntropyBottleneck | GaussianConditional):
            keys |= {f"{name}.{b}" if name else b for b, _ in module.named_buffers()}
    return keys


def check_coverage(
    model: nn.Module, mapped: Mapping[str, Tensor], derived: Iterable[str] = ()
) -> None:
    """The mapped official state fills every weight of `model` with the right shape.

    Keys of `model` left out are allowed only if they are coder buffers or named in `derived`
    (values the importer computes, e.g. solved quantiles); frozen networks of a
    `CodecModule` are never part of a checkpoint and are skipped.
    """
    target = {
        k: v
        for k, v in model.state_dict().items()
        if not (isinstance(model, CodecModule) and model._is_frozen_key(k))
    }
    extra = sorted(set(mapped) - set(target))
    if extra:
        raise OfficialCheckpointError(f"mapped keys unknown to the model: {extra[:8]}")
    allowed = coder_buffers(model) | set(derived)
    missing = sorted(k for k in target if k not in mapped and k not in allowed)
    if missing:
        raise OfficialCheckpointError(
            f"the official file lacks {len(missing)} weight(s) of the model: {missing[:8]}"
        )
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(target[key].shape):
            raise OfficialCheckpointError(
                f"{key}: the official file has shape {tuple(value.shape)}, the model "
                f"{tuple(target[key].shape)}; the width options do not match the file"
            )


def load_mapped(model: nn.Module, mapped: Mapping[str, Tensor], derived: Iterable[str] = ()):
    """Check the coverage of `mapped` and load it into `model`, strictly."""
    check_coverage(model, mapped, derived)
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in mapped.items()})
    model.load_state_dict(state)


def write_checkpoint(codec: CodecModule, out: str | Path, source: Mapping[str, Any]) -> Path:
    """Save `codec` as a checkpoint of this repository (Lightning layout, frozen networks left
    out, `codec_class` set) with `source` recorded under "imported_from"."""
    checkpoint = {
        **codec_checkpoint(codec),
        "epoch": 0,
        "global_step": 0,
        "imported_from": dict(source),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return out


def identify(obj: Any) -> str | None:
    """The official format of a loaded file ("cdc", "rdeic", "elic"), or None."""
    from . import cdc, elic, rdeic

    for name, module in (("cdc", cdc), ("rdeic", rdeic), ("elic", elic)):
        if module.matches(obj):
            return name
    return None


def import_official(
    method: str,
    src: str | Path,
    out: str | Path,
    allow_pickle: bool = False,
    **options: Any,
) -> CodecModule:
    """Import the official `method` checkpoint `src` into a checkpoint `out` of this repository
    and return the codec (eval mode, coder tables built). `options` go to the method's
    `convert` (hyper-parameters such as widths, λ, decoding defaults)."""
    from . import cdc, elic, rdeic

    formats = {"cdc": cdc, "rdeic": rdeic, "elic": elic}
    if method not in formats:
        raise OfficialCheckpointError(f"method must be one of {sorted(formats)}, got {method!r}")
    obj = load_official_file(src, allow_pickle)
    if isinstance(obj, Mapping) and "codec_class" in obj:
        raise OfficialCheckpointError(f"{src} is already a checkpoint of this repository")
    if not formats[method].matches(obj):
        found = identify(obj)
        if found is not None:
            raise OfficialCheckpointError(
                f"{src} is an official {found.upper()} checkpoint, not {method.upper()}: "
                f"import it with `scripts/import_official.py {found}`"
            )
        raise OfficialCheckpointError(
            f"{src} is not an official {method.upper()} checkpoint ({formats[method].EXPECTED})"
        )
    codec = formats[method].convert(obj, Path(src).name, **options)
    codec.eval()
    codec.update(force=True)
    write_checkpoint(codec, out, {"method": method, "file": Path(src).name, **options})
    return codec

"""Official folder layouts of the supported datasets, listed as :class:`Item` s.

A *spec* is a mapping with keys ``source`` (a key of :data:`SOURCES`), ``root``, ``split``
(``train``/``val``/``test``) and ``limit`` (keep the first N items); ``homepage`` optionally
tells a ``folder`` source where its images come from, for the error message.
"""

import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

_FIX = "set paths.data_root=<folder> (or DATA_ROOT=...), or set this split's root: directly"
_LSDIR = "LSDIR: https://data.vision.ee.ethz.ch/yawli/index.html"
_VIMEO = "Vimeo-90k septuplets: http://toflow.csail.mit.edu/"
_DIV2K = "DIV2K: https://data.vision.ee.ethz.ch/cvl/DIV2K/"
_SKIMAGE = "scikit-image (pip install -r requirements.txt)"
_SAMPLE_FILES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg",
}


@dataclass(frozen=True)
class Item:
    """One dataset entry: a still image (one frame) or a video clip (several frames)."""

    name: str
    frames: tuple[Path, ...]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or list file is missing or holds no images."""


@dataclass(frozen=True)
class _Layout:
    """Where a dataset comes from and an example file path under its root, for errors."""

    origin: str
    example: str
    fix: str = _FIX

    def error(self, problem: str, root: Path | None) -> DatasetNotFoundError:
        expected = f"{'<root>' if root is None else root}/{self.example}"
        return DatasetNotFoundError(
            f"{problem}; expected {expected}; get it from {self.origin}; fix: {self.fix}"
        )


def _root(spec: Mapping, layout: _Layout) -> Path:
    """The spec's root folder; raise if it is unset or missing."""
    root = spec.get("root")
    if root is None or str(root) == "":
        raise layout.error(f"source {spec['source']} needs a root folder (root: null)", None)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise layout.error(f"dataset folder not found: {root}", root)
    return root


def _require(path: Path, layout: _Layout, root: Path) -> Path:
    if not path.exists():
        kind = "list file" if path.suffix == ".txt" else "folder"
        raise layout.error(f"{kind} not found: {path}", root)
    return path


def _split(spec: Mapping, allowed: Mapping[str, str]) -> str:
    """The spec's split mapped through ``allowed``; raise ValueError for other splits."""
    split = spec.get("split")
    if split not in allowed:
        raise ValueError(
            f"source {spec['source']} has splits {sorted(allowed)}, got split: {split!r}"
        )
    return allowed[split]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan(folder: Path, recursive: bool = True) -> list[Item]:
    """Image files under ``folder`` (hidden files skipped), named by relative path sans suffix."""
    items = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = [d for d in subdirs if recursive and not d.startswith(".")]
        for file in files:
            if _is_image(file):
                path = Path(directory, file)
                name = path.relative_to(folder).with_suffix("").as_posix()
                items.append(Item(name, (path,)))
    return sorted(items, key=lambda item: item.name)


def _nonempty(items: list[Item], folder: Path, layout: _Layout, root: Path) -> list[Item]:
    if not items:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise layout.error(f"no images ({extensions}) in {folder}", root)
    return items


def _lsdir_layout(split: str) -> _Layout:
    example = "0001000/0000001.png" if split == "train" else "0000001.png"
    return _Layout(_LSDIR, f"HR/{split}/{example}")


def _lsdir_folder(spec: Mapping) -> Path:
    layout = _lsdir_layout(_split(spec, {"train": "train", "val": "val"}))
    root = _root(spec, layout)
    return _require(root / "HR" / spec["split"], layout, root)


def _lsdir(spec: Mapping) -> list[Item]:
    folder = _lsdir_folder(spec)
    return _nonempty(_scan(folder), folder, _lsdir_layout(folder.name), folder.parents[1])


def _vimeo_layout(list_name: str) -> _Layout:
    return _Layout(_VIMEO, f"{list_name} listing sequences/00001/0001/im1.png ... im7.png")


def _vimeo_list(spec: Mapping) -> Path:
    list_name = _split(
        spec, {"train": "sep_trainlist.txt", "val": "sep_testlist.txt", "test": "sep_testlist.txt"}
    )
    layout = _vimeo_layout(list_name)
    root = _root(spec, layout)
    _require(root / "sequences", layout, root)
    return _require(root / list_name, layout, root)


def _vimeo90k(spec: Mapping) -> list[Item]:
    list_file = _vimeo_list(spec)
    root, layout = list_file.parent, _vimeo_layout(list_file.name)
    lines = list_file.read_text(encoding="utf-8").splitlines()
    names = sorted({line.strip() for line in lines if line.strip()})
    if not names:
        raise layout.error(f"no clips listed in {list_file}", root)
    items = [
        Item(name, tuple(root / "sequences" / name / f"im{i}.png" for i in range(1, 8)))
        for name in names
    ]
    _require(items[0].frames[0].parent, layout, root)
    return items


def _div2k_folder(spec: Mapping) -> Path:
    folder = _split(
        spec, {"train": "DIV2K_train_HR", "val": "DIV2K_valid_HR", "test": "DIV2K_valid_HR"}
    )
    layout = _Layout(_DIV2K, f"{folder}/0001.png")
    root = _root(spec, layout)
    return _require(root / folder, layout, root)


def _div2k(spec: Mapping) -> list[Item]:
    folder = _div2k_folder(spec)
    layout = _Layout(_DIV2K, f"{folder.name}/0001.png")
    return _nonempty(_scan(folder, recursive=False), folder, layout, folder.parent)


def _folder_layout(spec: Mapping) -> _Layout:
    extensions = "|".join(sorted(ext[1:] for ext in IMAGE_EXTENSIONS))
    origin = spec.get("homepage") or "the dataset's homepage"
    return _Layout(origin, f"**/<name>.{{{extensions}}}")


def _folder_root(spec: Mapping) -> Path:
    return _root(spec, _folder_layout(spec))


def _folder(spec: Mapping) -> list[Item]:
    root = _folder_root(spec)
    return _nonempty(_scan(root), root, _folder_layout(spec), root)


def _sample_files(spec: Mapping) -> dict[str, Path]:
    layout = _Layout(_SKIMAGE, "astronaut.png", fix="reinstall scikit-image")
    module = importlib.util.find_spec("skimage.data")
    if module is None or module.origin is None:
        raise layout.error("scikit-image is not installed", Path("skimage/data"))
    folder = Path(module.origin).parent
    files = {name: folder / file for name, file in _SAMPLE_FILES.items()}
    for path in files.values():
        if not path.is_file():
            raise layout.error(f"sample image not found: {path}", folder)
    return files


def _sample(spec: Mapping) -> list[Item]:
    return [Item(name, (path,)) for name, path in _sample_files(spec).items()]


SOURCES: dict[str, Callable[[Mapping], list[Item]]] = {
    "lsdir": _lsdir,
    "vimeo90k": _vimeo90k,
    "div2k": _div2k,
    "folder": _folder,
    "sample": _sample,
}
_CHECKS: dict[str, Callable[[Mapping], object]] = {
    "lsdir": _lsdir_folder,
    "vimeo90k": _vimeo_list,
    "div2k": _div2k_folder,
    "folder": _folder_root,
    "sample": _sample_files,
}


def _source(spec: Mapping) -> str:
    source = spec.get("source")
    if source not in SOURCES:
        raise ValueError(f"data spec needs source: one of {sorted(SOURCES)}, got {source!r}")
    return source


def check_exists(spec: Mapping) -> None:
    """Check that the folders and list files :func:`list_items` reads exist, without listing.

    Raises:
        DatasetNotFoundError: the root, a list file or an expected sub-folder is missing.
        ValueError: unknown source or split.
    """
    _CHECKS[_source(spec)](spec)


def list_items(spec: Mapping) -> list[Item]:
    """List the items of a dataset spec, sorted by name (``sample`` keeps its fixed order).

    Raises:
        DatasetNotFoundError: the layout is missing or holds no images.
        ValueError: unknown source or split, or a bad ``limit``.
    """
    limit = spec.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer or null, got {limit!r}")
    return SOURCES[_source(spec)](spec)[:limit]

"""Robust image reading: every readable file becomes an H×W×3 uint8 RGB array."""

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_KINDS = {"L": "grayscale", "1": "bilevel", "P": "palette", "CMYK": "CMYK", "F": "float"}


class ImageLoadError(OSError):
    """An image file could not be opened or decoded; the message names the file and reason."""


class ImageConversionWarning(UserWarning):
    """An image was converted to 8-bit RGB (grayscale, palette, alpha, CMYK, 16-bit, ...)."""


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an H×W×3 uint8 RGB array.

    EXIF orientation is applied. Grayscale, palette, alpha (composited over white), CMYK and
    16-bit images are converted to 8-bit RGB with an :class:`ImageConversionWarning`.

    Raises:
        ImageLoadError: the file is missing, not an image, truncated, or has a zero dimension.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageLoadError(
            f"cannot read image {path}: {type(error).__name__}: {error}"
        ) from error
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"cannot read image {path}: zero size ({image.width}×{image.height})")
    try:
        array, conversion = _to_rgb_array(image)
    except (OSError, ValueError) as error:
        reason = f"cannot convert mode {image.mode} to RGB: {error}"
        raise ImageLoadError(f"cannot read image {path}: {reason}") from error
    if conversion:
        warnings.warn(f"{path}: {conversion}", ImageConversionWarning, stacklevel=2)
    return array


def _to_rgb_array(image: Image.Image) -> tuple[np.ndarray, str | None]:
    """Convert to an RGB uint8 array; also return what was converted (None for plain RGB)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image), None
    if mode in _SIXTEEN_BIT_MODES:
        array, conversion = _to_uint8(np.array(image), mode)
        return np.repeat(array[..., None], 3, axis=2), conversion
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "P with transparency"
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        composited = Image.alpha_composite(white, rgba).convert("RGB")
        return np.array(composited), f"mode {mode} converted to RGB, alpha composited over white"
    kind = _KINDS.get(mode, "colour")
    return np.array(image.convert("RGB")), f"{kind} image (mode {mode}) converted to RGB"


def _to_uint8(array: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """Map 16-bit values 0..65535 to 0..255 (divide by 257, round); 8-bit values pass."""
    if mode != "I" or array.max(initial=0) > 255:
        wide = np.clip(array, 0, 65535).astype(np.uint32)
        scaled = ((wide + 128) // 257).astype(np.uint8)
        return scaled, f"16-bit image (mode {mode}) scaled to 8 bit and converted to RGB"
    converted = np.clip(array, 0, 255).astype(np.uint8)
    return converted, f"integer image (mode {mode}, values ≤ 255) converted to RGB"

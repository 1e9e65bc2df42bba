"""Image files in and out: png, jpg, bmp, tif; 8 or 16 bit; gray, RGB or RGBA. Arrays are H x W x C, RGB order."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.output import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# OpenCV indexes a Mat with 32-bit integers and caps decoded images at 2**30 pixels by default.
MAX_PIXELS = 2**30


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), or the physical memory elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_image_size(height: int, width: int, bytes_per_pixel: int, what: str = "size") -> None:
    """Refuse, before any work, an image size whose arrays cannot be held (estimated at `bytes_per_pixel` bytes
    per pixel over all the working arrays) or that OpenCV cannot process."""
    pixels = int(height) * int(width)
    if pixels > MAX_PIXELS:
        raise DefectgenError(None, f"{what} {height}x{width} has {pixels:,} pixels; the most OpenCV handles is "
                             f"{MAX_PIXELS:,}")
    need, have = pixels * bytes_per_pixel, available_memory()
    if need > have:
        raise DefectgenError(None, f"{what} {height}x{width} needs about {need / 2**30:.1f} GiB of memory; "
                             f"{have / 2**30:.1f} GiB is available")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _decode(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII paths
    except FileNotFoundError:
        raise DefectgenError(path, "file not found") from None
    except OSError as e:
        raise DefectgenError(path, f"cannot read file ({e.strerror or e})") from None
    if data.size == 0:
        raise DefectgenError(path, "empty file, not an image")
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DefectgenError(path, "cannot decode image (corrupt or unsupported format)")
    if array.dtype not in (np.uint8, np.uint16):
        raise DefectgenError(path, f"unsupported pixel type {array.dtype}; expected 8- or 16-bit integers")
    return array


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as H x W x C (C = 1 for gray, 3 for colour; alpha is dropped), keeping 8 or 16 bits."""
    path = Path(path)
    array = _decode(path)
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DefectgenError(path, f"unsupported image shape {array.shape}")
    if array.shape[2] == 1:
        return array
    if array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array[:, :, ::-1])  # BGR -> RGB


def binarize_mask(array: np.ndarray) -> np.ndarray:
    """Foreground = above half the mask's own maximum, so {0,1}, {0,255} and {0,65535} masks all mean the same,
    and JPEG ringing around a 0/255 mask does not count as defect."""
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    peak = float(array.max()) if array.size else 0.0
    if peak <= 0:
        return np.zeros(array.shape[:2], dtype=bool)
    return array > max(peak / 2.0, 0.5) if peak > 1 else array > 0


def read_mask(
    path: str | Path, shape: tuple[int, int] | None = None, image_path: str | Path | None = None,
) -> np.ndarray:
    """Read a defect mask as an H x W bool array; with `shape`, insist that it matches the image's (H, W)."""
    path = Path(path)
    mask = binarize_mask(_decode(path))
    if shape is not None and tuple(mask.shape[:2]) != tuple(shape):
        h, w = mask.shape[:2]
        other = f" ({image_path})" if image_path else ""
        raise DefectgenError(path, f"mask is {w}x{h} but its image{other} is {shape[1]}x{shape[0]}")
    return mask


def encode_image(image: np.ndarray, suffix: str = ".png") -> bytes:
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]  # RGB -> BGR for OpenCV
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image))
    if not ok:
        raise DefectgenError(None, f"cannot encode image as {suffix}")
    return buf.tobytes()


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write atomically; the format follows the suffix (png keeps 16 bits)."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(image, path.suffix or ".png"))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as a 0/255 8-bit PNG."""
    write_image(path, (np.asarray(mask) > 0).astype(np.uint8) * 255)


def dtype_max(dtype: np.dtype) -> float:
    return 65535.0 if np.dtype(dtype) == np.uint16 else 255.0


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 H x W x C -> float32 in [0, 1]."""
    return image.astype(np.float32) / dtype_max(image.dtype)


def from_float(image: np.ndarray, dtype: np.dtype = np.uint8) -> np.ndarray:
    """float in [0, 1] -> uint8/uint16, rounded and clipped."""
    peak = dtype_max(dtype)
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * peak), 0, peak).astype(dtype)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """For display: 16-bit images scaled down to 8 bits."""
    return image if image.dtype == np.uint8 else from_float(to_float(image), np.uint8)

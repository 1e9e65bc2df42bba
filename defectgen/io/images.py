"""Image files in and out: png, jpg, bmp, tif; 8 or 16 bit; gray, RGB or RGBA. Arrays are H x W x C, RGB order."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from defectgen.errors import DefectgenError
from defectgen.io.files import atomic_write_bytes, made_by_defectgen

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


_noted_outputs: set[tuple[str, int]] = set()


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder` at any depth, sorted, leaving out defectgen's own output folders inside it
    (those holding its `.defectgen-*.json` marker, other than `folder` itself): a synthesized set, a masks run or a
    contact sheet written inside an input must never become input. Says once on stderr how many were skipped."""
    import os
    import sys

    root = Path(folder)
    found: list[Path] = []
    skipped: list[Path] = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        keep = []
        for d in sorted(dirs):
            (skipped if made_by_defectgen(here / d) else keep).append(here / d)
        dirs[:] = [d.name for d in keep]
        found += [here / f for f in files if is_image_file(here / f)]
    if skipped and (str(root.resolve()), len(skipped)) not in _noted_outputs:
        _noted_outputs.add((str(root.resolve()), len(skipped)))
        names = ", ".join(str(p.relative_to(root)) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        sys.stderr.write(f"note: skipped {len(skipped)} defectgen output folder(s) inside {root} ({names}); "
                         "outputs are never read as inputs\n")
    return sorted(found)


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


# ---- pixel operations: resize, crop windows, channels ---------------------------------------------------------

def resize(image: np.ndarray, height: int, width: int, nearest: bool = False,
           interpolation: int | None = None) -> np.ndarray:
    """`image` (H x W or H x W x C, C kept even when 1) at height x width; returned as is when already that size.
    The interpolation is `interpolation` if given, else nearest, else area when the height shrinks, else linear."""
    if image.shape[:2] == (height, width):
        return image
    if interpolation is None:
        interpolation = cv2.INTER_NEAREST if nearest else (
            cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR)
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out.reshape(height, width, -1) if image.ndim == 3 else out


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """H x W x C float -> H x W x `channels` (gray repeated to RGB, RGB to luma)."""
    c = image.shape[2]
    if c == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return (image[:, :, :3] @ weights)[:, :, None].astype(np.float32)


def mask_window(height: int, width: int, mask: np.ndarray | None, resolution: int,
                rng: np.random.Generator | None = None, margin: float = 1.25,
                context: float = 1.0) -> tuple[int, int, int, int]:
    """A window (y0, x0, h, w) of side max(resolution * context, mask extent * margin), clipped to the image,
    around the mask (jittered by `rng` so the mask is not always centred). Without a mask: a random (or centre)
    window. `context` > 1 shows a model more surface around a small defect, at the cost of its detail (the window
    is resized to `resolution`)."""
    if context < 1:
        raise ValueError(f"context must be at least 1, got {context}")
    least = round(resolution * context)  # the window's smallest side
    side = least
    cy, cx = height / 2, width / 2
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        y_lo, y_hi, x_lo, x_hi = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        side = max(least, math.ceil(max(y_hi - y_lo, x_hi - x_lo) * margin))
        cy, cx = (y_lo + y_hi) / 2, (x_lo + x_hi) / 2
        if rng is not None:
            slack = max(side - max(y_hi - y_lo, x_hi - x_lo), 0) / 2
            cy, cx = cy + rng.uniform(-slack, slack), cx + rng.uniform(-slack, slack)
    elif rng is not None:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    h, w = min(side, height), min(side, width)
    y0 = int(np.clip(round(cy - h / 2), 0, height - h))
    x0 = int(np.clip(round(cx - w / 2), 0, width - w))
    return y0, x0, h, w


def to_model_size(image: np.ndarray, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """A window and its mask at the model's resolution x resolution: the image resampled (area when shrinking),
    the mask nearest-neighbour, and a sliver that nearest-neighbour loses kept from the area-resampled mask so
    that it still gets generated."""
    small = resize(image, resolution, resolution)
    small_mask = resize(mask.astype(np.uint8), resolution, resolution, nearest=True) > 0
    if mask.any() and not small_mask.any():
        small_mask = resize(mask.astype(np.float32), resolution, resolution) > 0
    return small, small_mask


def padded_box(mask: np.ndarray, pad: float = 0.5, min_side: int = 32,
               square: bool = False) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): the mask's extent grown by `pad` of its size on each side (at least min_side; with
    `square`, both sides the longer one), clipped to the mask's shape; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape[:2]
    y_lo, y_hi, x_lo, x_hi = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side_y = max((y_hi - y_lo) * (1 + 2 * pad), min_side)
    side_x = max((x_hi - x_lo) * (1 + 2 * pad), min_side)
    if square:
        side_y = side_x = max(side_y, side_x)
    cy, cx = (y_lo + y_hi) / 2, (x_lo + x_hi) / 2
    y0, y1 = int(max(0, cy - side_y / 2)), int(min(h, math.ceil(cy + side_y / 2)))
    x0, x1 = int(max(0, cx - side_x / 2)), int(min(w, math.ceil(cx + side_x / 2)))
    return y0, y1, x0, x1


def padded_crop(image: np.ndarray, mask: np.ndarray, pad: float = 0.5, min_side: int = 32) -> np.ndarray:
    """The image inside `padded_box`; the whole image for an empty mask."""
    box = padded_box(mask, pad, min_side)
    if box is None:
        return image
    y0, y1, x0, x1 = box
    return image[y0:y1, x0:x1]


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


def fit_uint8(image: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """Any stored image -> height x width x channels uint8 (what the detectors work on): area-resampled when
    shrinking, bilinear when growing; gray repeated to RGB, or RGB averaged to gray."""
    interp = cv2.INTER_AREA if image.shape[0] > height or image.shape[1] > width else cv2.INTER_LINEAR
    img = resize(to_float(image).reshape(*image.shape[:2], -1), height, width, interpolation=interp)
    if img.shape[2] != channels:
        img = np.repeat(img, 3, axis=2) if channels == 3 else img.mean(axis=2, keepdims=True)
    return from_float(img, np.uint8)


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A bool mask at height x width: area-resampled and cut at one half; a defect smaller than a pixel keeps its
    strongest pixel."""
    if mask.shape[:2] == (height, width):
        return np.asarray(mask, bool)
    m = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    out = m >= 0.5
    if mask.any() and not out.any():
        out = m >= m.max()
    return out


def stack_or_list(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One array when every item has the same shape (a batch), else the list as it is (images at native size)."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return list(arrays)


# ---- tiles: images larger than the model, scored in overlapping windows at native scale ------------------------

def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` grown to at least height x width by mirroring its edges (bottom and right), so that a tile fits;
    returned as is when already that large."""
    dh, dw = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if not dh and not dw:
        return image
    pad = ((0, dh), (0, dw)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="symmetric")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of `tile` every `stride` along `length` (>= tile), the last one flush with the end,
    so that every pixel is covered."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def random_window(height: int, width: int, side: int, rng: np.random.Generator,
                  mask: np.ndarray | None = None) -> tuple[int, int]:
    """The top-left corner of a random side x side window in a height x width image (at least that large); with a
    non-empty `mask`, one that holds a random pixel of it (so a small defect is never cut away)."""
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(ys)))
        y0 = int(np.clip(ys[k] - rng.integers(side), 0, height - side))
        x0 = int(np.clip(xs[k] - rng.integers(side), 0, width - side))
        return y0, x0
    return int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))

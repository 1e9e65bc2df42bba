"""Where a mask may go: the seeded generator every mask draw uses (`mask_rng`), the object's pixels in an image
(`estimate_foreground`), and where a crop fits on them (`on_foreground`). Shared by the mask sources and the
copy-paste generators."""

from __future__ import annotations

import cv2
import numpy as np


def mask_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def estimate_foreground(image: np.ndarray) -> np.ndarray:
    """The object's pixels by Otsu's threshold on the gray image, keeping the largest connected part.
    Suits a bright or dark object on a plain background; a texture filling the frame comes back (almost) whole."""
    gray = image if image.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    gray = gray.squeeze()
    if gray.dtype != np.uint8:
        gray = (gray / 257).astype(np.uint8)
    _, fg = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if fg.mean() < 0.5 and fg[[0, -1], :].mean() > 0.5:  # the border is bright: the object is the dark part
        fg = 1 - fg
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8))
    if n <= 1:
        return np.ones(gray.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def on_foreground(crop: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Where a bool `crop` can go on an image with this `foreground`: a bool map of its top-left corners, True
    where it lies wholly on the foreground, or, where it fits nowhere, where it covers the most foreground."""
    h, w = foreground.shape
    ch, cw = crop.shape
    # count[y, x] = foreground pixels under the crop with its top-left corner at (y, x)
    count = cv2.filter2D(foreground.astype(np.float32), -1, crop.astype(np.float32), anchor=(0, 0),
                         borderType=cv2.BORDER_CONSTANT)[:h - ch + 1, :w - cw + 1]
    best = count >= float(crop.sum()) - 0.5
    return best if best.any() else count >= float(count.max()) - 0.5

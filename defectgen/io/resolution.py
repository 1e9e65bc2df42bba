"""What `resolution` means everywhere (validate, inspect, train-ddpm, train-ldm): `HxW`, a fixed model input,
or one number N, the short side, with each image's aspect kept (the long side rounded to the model's multiple).

    parse_resolution("64x192").for_image(70, 200)   # (64, 192): as given
    parse_resolution("256").for_image(256, 1600)    # (256, 1600): the short side, aspect kept
    parse_resolution(128).for_image(800, 2000)      # (128, 320)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from defectgen.errors import DefectgenError

# the detectors' backbones reduce by 32; generators pass their own UNet's multiple
MULTIPLE = 32


@dataclass(frozen=True)
class Resolution:
    """A fixed `height` x `width`, or (`short` set) the short side with the image's aspect kept; every side is a
    positive multiple of `multiple`."""

    height: int | None = None
    width: int | None = None
    short: int | None = None
    multiple: int = MULTIPLE

    def for_image(self, height: int, width: int) -> tuple[int, int]:
        """The model input (H, W) for an image of `height` x `width`."""
        if self.short is None:
            return int(self.height), int(self.width)
        if height <= width:
            return self.short, self._round(self.short * width / max(height, 1))
        return self._round(self.short * height / max(width, 1)), self.short

    def for_sizes(self, sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
        """One model input for a set of images, so that every tensor of a batch has one shape: that of the most
        common size (the first seen among equals). A set of mixed aspects is squashed to it, each image's map
        later resized back to the image's own size."""
        return self.for_image(*most_common_size(sizes))

    def _round(self, side: float) -> int:
        return max(self.multiple, int(round(side / self.multiple)) * self.multiple)

    @property
    def square_side(self) -> int | None:
        """N for `N` or `NxN` (what a square model takes); None for a non-square HxW."""
        if self.short is not None:
            return self.short
        return self.height if self.height == self.width else None

    def __str__(self) -> str:
        return str(self.short) if self.short is not None else f"{self.height}x{self.width}"


def parse_resolution(value: str | int | Resolution | tuple[int, int] | list[int], multiple: int = MULTIPLE,
                     name: str = "resolution", square: bool = False) -> Resolution:
    """`HxW` (each a positive multiple of `multiple`), or one number (the short side, a positive multiple of
    `multiple`), as text, an int, or an (H, W) pair (what report.json records). Anything else raises a one-line
    `DefectgenError` naming the parameter `name` and the nearest value accepted (one number when `square`)."""
    if isinstance(value, Resolution):
        if value.multiple == multiple:
            return value
        value = str(value)
    if isinstance(value, (tuple, list)):
        value = "x".join(str(v) for v in value)
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+)(?:\s*x\s*(\d+))?", text)
    sides = [int(g) for g in match.groups() if g is not None] if match else []
    if not sides or any(s <= 0 or s % multiple for s in sides):
        nearest = [max(multiple, round(s / multiple) * multiple) for s in sides]
        if square:  # a square window: one number, whatever was typed
            raise DefectgenError(None, f"`{name}` must be one number, a positive multiple of {multiple} (the side "
                                 f"of the square training window); got {value!r}"
                                 + (f"; try {nearest[0]}" if nearest else ""))
        hint = f"; try {'x'.join(map(str, nearest))}" if nearest else ""
        raise DefectgenError(None, f"`{name}` must be HxW (each a positive multiple of {multiple}, such as "
                             f"{8 * multiple}x{20 * multiple}) or one number, the short side with the aspect kept "
                             f"(a positive multiple of {multiple}); got {value!r}{hint}")
    if len(sides) == 1:
        return Resolution(short=sides[0], multiple=multiple)
    return Resolution(height=sides[0], width=sides[1], multiple=multiple)


def square_side(value: str | int | None, multiple: int, what: str, name: str = "resolution") -> int | None:
    """The side of a square training window (the generators train on square windows at native scale): `N` or
    `NxN`; a non-square HxW is refused, naming `what` trains on squares. None stays None (the model's default)."""
    if value is None:
        return None
    res = parse_resolution(value, multiple, name, square=True)
    if res.square_side is None:
        raise DefectgenError(None, f"`{name}` {res}: {what} trains on square windows cut at native scale around "
                             f"the defects; give one number, the window side (such as {res.height})")
    return res.square_side


def most_common_size(sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The (H, W) that occurs most often (the first seen among equals)."""
    counts = Counter((int(h), int(w)) for h, w in sizes)
    if not counts:
        raise ValueError("no image sizes given")
    return counts.most_common(1)[0][0]  # Counter keeps first-seen order among equal counts

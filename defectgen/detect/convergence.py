"""Training supervised heads to convergence: a validation split carved from the training defects (never the test
set), early stopping on its score with the best epoch's weights kept, and a cache of the frozen backbone's maps so
that epochs after the first cost only the head. det and seg share these."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from defectgen.detect.features import batches, to_tensor

VALIDATION_SHARE = 0.15
MIN_DEFECTS_FOR_VALIDATION = 20  # fewer: every defect trains and every epoch runs (a 2-image split only adds noise)


def validation_split(n_defects: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) of `n_defects` defect images: a seeded 15% for validation, none when
    there are fewer than `MIN_DEFECTS_FOR_VALIDATION`."""
    order = np.random.default_rng([seed, 7]).permutation(n_defects)
    n_val = int(round(VALIDATION_SHARE * n_defects)) if n_defects >= MIN_DEFECTS_FOR_VALIDATION else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


@dataclass
class EarlyStopping:
    """Keeps the best validation score, its epoch and a copy of the weights then; `update` says when to stop."""

    patience: int
    best: float = -np.inf
    best_epoch: int = 0
    since: int = 0
    stopped: str = "reached the epoch cap"
    history: list[dict[str, Any]] = field(default_factory=list)
    _state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, loss: float, score: float | None,
               state: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Record epoch `epoch` (1-based); True when `patience` epochs in a row brought no gain."""
        self.history.append({"epoch": epoch, "loss": loss, "val": score})
        if score is None:
            return False
        if score > self.best:
            self.best, self.best_epoch, self.since, self._state = score, epoch, 0, copy.deepcopy(state())
            return False
        self.since += 1
        if self.since >= self.patience:
            self.stopped = f"no validation gain for {self.patience} epochs"
            return True
        return False

    def restore(self, module: torch.nn.Module) -> None:
        """Load the best epoch's weights back (nothing when no epoch was validated)."""
        if self._state is not None:
            module.load_state_dict(self._state, strict=False)

    def report(self, validation_images: int, train_images: int, metric: str) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_") and k not in ("since", "patience")}
        if not validation_images:
            d["stopped"] = (f"no validation split (fewer than {MIN_DEFECTS_FOR_VALIDATION} defect images): ran every "
                            "epoch")
            d["best"], d["best_epoch"] = None, None
        return {"epochs": len(self.history), "validation_metric": metric, "validation_images": validation_images,
                "train_images": train_images, **d}


FLIPS = ((), (-1,), (-2,), (-2, -1))  # none, horizontal, vertical, both


class MapCache:
    """The frozen backbone's maps of (image, flip variant), computed once (`fill`, in batches, with a progress
    bar) and kept in half precision on the CPU. `maps(keys)` stacks a batch's maps per level on `device`."""

    def __init__(self, compute: Callable[[torch.Tensor], list[torch.Tensor]], images: Sequence[np.ndarray],
                 device: torch.device, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.compute, self.images, self.device = compute, images, device
        self.prepare = prepare or (lambda x: x)
        self.store: dict[tuple[int, int], list[torch.Tensor]] = {}

    def image(self, i: int, flip: int) -> torch.Tensor:
        """Image `i` as C x H x W in [0, 1], flipped by variant `flip`."""
        return torch.flip(to_tensor(self.images[i][None], "cpu")[0], FLIPS[flip])

    def fill(self, keys: Sequence[tuple[int, int]], batch_size: int = 16, progress: bool = False,
             desc: str = "backbone maps") -> None:
        from defectgen.progress import bar

        todo = [k for k in dict.fromkeys(keys) if k not in self.store]
        with bar(total=len(todo), desc=desc, unit="img", disable=not progress or not todo) as shown:
            for sl in batches(len(todo), batch_size):
                chunk = todo[sl]
                x = self.prepare(torch.stack([self.image(i, f) for i, f in chunk]).to(self.device))
                with torch.no_grad():
                    maps = self.compute(x)
                for k, key in enumerate(chunk):
                    self.store[key] = [m[k].to("cpu", torch.float16) for m in maps]
                shown.update(len(chunk))

    def maps(self, keys: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        self.fill(keys)
        levels = len(next(iter(self.store.values())))
        return [torch.stack([self.store[k][level] for k in keys]).to(self.device, torch.float32)
                for level in range(levels)]

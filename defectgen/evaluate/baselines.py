"""The baselines a synthetic set is measured against, as a registry: each `Baseline` has a name, says what it
needs (labeled defects, a synthetic set, normals to paint on, a supervised detector) and makes its training set
from the experiment's inputs (`make(inputs, n, seed)`).

- `none`: the normals alone (for the unsupervised detectors).
- `draem`: the classic DRAEM-style generator (the generator registry's `draem`) applied in memory to n
  normals, Perlin masks.
- `copypaste`: real labeled defects pasted onto n normals (`defectgen.synth.copypaste`).
- `real`: the labeled defects (with the normals: ExDD puts their patches in its positive bank, AST trains its
  head on them with inpainted clean images, seg and det learn from them).
- `real+synthetic`: labeled defects plus the synthetic set, how a user would really use a generated set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from defectgen.errors import DefectgenError
from defectgen.evaluate.data import Images, Inputs, TrainingSet, labels_from_classes
from defectgen.io.images import from_float, stack_or_list
from defectgen.masks import MaskGenerator
from defectgen.synth.base import get_generator
from defectgen.synth.copypaste import copypaste_set


@dataclass(frozen=True)
class Baseline:
    """A baseline run. needs_labeled: it trains on the real labeled defects (`real_labeled`); needs_synthetic:
    on the synthetic set too; supervised_only: on labeled defects alone, which only a supervised detector can
    learn from; paints_on_normals: it makes its defects on the normal training images; has_defects: False for
    the normals alone, which a supervised detector cannot learn from (the run is skipped). build(inputs, n,
    seed) makes the training set (n: how many defects a baseline that makes defects makes)."""

    name: str
    build: Callable[[Inputs, int, int], TrainingSet]
    needs_labeled: bool = False
    needs_synthetic: bool = False
    supervised_only: bool = False
    paints_on_normals: bool = False
    has_defects: bool = True

    def make(self, inputs: Inputs, n: int, seed: int) -> TrainingSet:
        """The baseline's training set from the experiment's inputs."""
        return self.build(inputs, n, seed)


BASELINE_REGISTRY: dict[str, Baseline] = {}


def register_baseline(baseline: Baseline) -> Baseline:
    """Make `baseline` available by its name (validate's `baselines`)."""
    BASELINE_REGISTRY[baseline.name] = baseline
    return baseline


def baseline_names() -> list[str]:
    return list(BASELINE_REGISTRY)


def get_baseline(name: str) -> Baseline:
    """The baseline registered as `name`."""
    if name not in BASELINE_REGISTRY:
        raise DefectgenError(None, f"unknown baseline {name!r}; choose from {', '.join(BASELINE_REGISTRY)}")
    return BASELINE_REGISTRY[name]


def draem_set(normals: Sequence[np.ndarray], n: int, seed: int) -> tuple[Images, Images, Images]:
    """n DRAEM-style defects on randomly chosen normals (of any sizes) with Perlin masks (textures: the
    normals): images, masks and cleans as arrays, or lists when the normals differ in size."""
    rng = np.random.default_rng([seed, 7])
    pick = rng.integers(len(normals), size=n)
    masks = [MaskGenerator("perlin", seed=seed)(i, *normals[k].shape[:2])[0] for i, k in enumerate(pick)]
    gen = get_generator("draem")("draem", textures=list(normals))
    floats = [normals[i].astype(np.float32) / 255.0 for i in pick]
    out = gen.generate(floats, masks, [int(seed) * 100003 + i for i in range(n)], [None] * n)
    return (stack_or_list([from_float(o, np.uint8) for o in out]), stack_or_list(masks),
            stack_or_list([normals[i] for i in pick]))


def _painted(images: Images, masks: Images, cleans: Images, per_image: Sequence[str], real_images: int = 0
             ) -> TrainingSet:
    labels, names = labels_from_classes(masks, per_image)
    return TrainingSet(images, masks, cleans, labels, names, synthetic_images=len(images), real_images=real_images)


def _draem(inputs: Inputs, n: int, seed: int) -> TrainingSet:
    images, masks, cleans = draem_set(inputs.normals, n, seed)
    return _painted(images, masks, cleans, ["defect"] * len(masks))


def _copypaste(inputs: Inputs, n: int, seed: int) -> TrainingSet:
    images, masks, cleans, per_image = copypaste_set(inputs.normals, inputs.labeled.samples, n, seed)
    return _painted(images, masks, cleans, per_image, real_images=len(inputs.labeled.images))


for _baseline in (
    Baseline("none", lambda inputs, n, seed: TrainingSet.empty(), has_defects=False),
    Baseline("draem", _draem, paints_on_normals=True),
    Baseline("copypaste", _copypaste, needs_labeled=True, paints_on_normals=True),
    Baseline("real", lambda inputs, n, seed: inputs.labeled.training_set(), needs_labeled=True),
    Baseline("real+synthetic", lambda inputs, n, seed: inputs.synthetic.merge(inputs.labeled.training_set()),
             needs_labeled=True, needs_synthetic=True),
):
    register_baseline(_baseline)

BASELINES = tuple(BASELINE_REGISTRY)
DEFAULT_BASELINES = ("none", "draem")
NEEDS_LABELED = tuple(b.name for b in BASELINE_REGISTRY.values() if b.needs_labeled)


def training_sets(baselines: Sequence[str], inputs: Inputs, n_draem: int | None, seed: int
                  ) -> tuple[dict[str, TrainingSet], int]:
    """Each run's training set by run name (the synthetic set first, then the baselines in the order given),
    and how many defects the baselines that make defects make (`n_draem`; default: as many as the synthetic set
    has, else 100)."""
    runs: dict[str, TrainingSet] = {} if inputs.synthetic is None else {"synthetic": inputs.synthetic}
    n = n_draem or (len(inputs.synthetic.images) if inputs.synthetic is not None else 100)
    for name in baselines:
        runs[name] = get_baseline(name).make(inputs, n, seed)
    return runs, n

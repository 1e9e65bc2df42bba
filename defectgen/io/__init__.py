"""Reading and writing: images of any depth and channel count, every input layout, COCO annotations."""

from defectgen.io.datasets import FORMATS, Dataset, open_dataset
from defectgen.io.images import read_image, read_mask, write_image, write_mask
from defectgen.io.sample import Box, Sample

__all__ = [
    "FORMATS", "Box", "Dataset", "Sample", "open_dataset", "read_image", "read_mask", "write_image", "write_mask",
]

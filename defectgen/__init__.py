"""defectgen: synthetic defect data for industrial visual inspection."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("defectgen")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+src"

from defectgen.errors import DefectgenError
from defectgen.io.sample import Box, Sample

__all__ = ["Box", "DefectgenError", "Sample", "__version__"]

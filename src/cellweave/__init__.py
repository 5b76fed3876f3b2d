"""cellweave: atlas-scale single-cell multi-omics integration, streamed from Zarr and TileDB-SOMA."""

from importlib.metadata import PackageNotFoundError, version

from .errors import InputError

try:
    __version__ = version("cellweave")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["InputError", "__version__"]

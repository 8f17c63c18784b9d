"""GDAL state, held in one context manager (the rasterio ``Env`` pattern).

Every function that opens a raster does so inside :func:`gdal_env`, so the same GDAL settings
apply in the main process and on every Dask worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import rasterio

#: GDAL options geogla runs with; environment variables of the same name win.
GDAL_DEFAULTS: dict[str, Any] = {
    # MB: a few rows of tiles.  GDAL fills its cache up to this bound (the COG overviews of a 16k
    # scene would take 256 MB), so it is part of the run's peak memory: kept small.
    "GDAL_CACHEMAX": 64,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing for remote scenes
    "GDAL_NUM_THREADS": "ALL_CPUS",  # decompression and COG overviews
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.png,.jpg,.jpeg",
}


def gdal_options() -> dict[str, Any]:
    """The GDAL options in force: :data:`GDAL_DEFAULTS` overridden by the process environment."""
    return {k: os.environ.get(k, v) for k, v in GDAL_DEFAULTS.items()}


@contextmanager
def gdal_env(**overrides: Any) -> Iterator[None]:
    """Run the body with geogla's GDAL settings (plus ``overrides``) in force."""
    with rasterio.Env(**{**gdal_options(), **overrides}):
        yield

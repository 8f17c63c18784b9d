"""GDAL state, held in one context manager (the rasterio ``Env`` pattern).

Every function that opens a raster does so inside :func:`gdal_env`, so the same GDAL settings
apply in the main process and on every Dask worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import rasterio

#: GDAL options geogla runs with; environment variables of the same name win.
GDAL_DEFAULTS: dict[str, Any] = {
    # MB: a few rows of tiles.  GDAL fills its cache up to this bound (the COG overviews of a 16k
    # scene would take 256 MB), so it is part of the run's peak memory: kept small.
    "GDAL_CACHEMAX": 64,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing for remote scenes
    "GDAL_NUM_THREADS": "ALL_CPUS",  # decompression and COG overviews
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.png,.jpg,.jpeg",
    # Remote scenes: an object store that throttles (HTTP 429, 503) or a proxy that fails (502,
    # 504) is asked again, after 1 s, then longer; adjacent tile ranges go in one request.
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 1,
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
}


def gdal_options() -> dict[str, Any]:
    """The GDAL options in force: :data:`GDAL_DEFAULTS` overridden by the process environment, and
    the S3 endpoint of ``$AWS_ENDPOINT_URL`` (:func:`s3_endpoint_options`)."""
    options = {k: os.environ.get(k, v) for k, v in GDAL_DEFAULTS.items()}
    options.update(s3_endpoint_options(os.environ))
    return options


def s3_endpoint_options(environ: Mapping[str, str]) -> dict[str, str]:
    """GDAL's ``/vsis3/`` settings for the S3-compatible endpoint in ``AWS_ENDPOINT_URL`` (the
    variable boto3, s3fs and the run store use; GDAL reads ``AWS_S3_ENDPOINT`` instead): its host
    and port, HTTPS or not, and path-style addressing (``host/bucket/key``, which any endpoint
    serves, where virtual hosting needs a DNS name per bucket).  None of them when the
    environment sets ``AWS_S3_ENDPOINT`` itself, or no endpoint."""
    url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if not url or "AWS_S3_ENDPOINT" in environ:
        return {}
    parts = urlsplit(url)
    if not parts.netloc:
        return {}
    return {"AWS_S3_ENDPOINT": parts.netloc + parts.path.rstrip("/"),
            "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES",
            "AWS_VIRTUAL_HOSTING": environ.get("AWS_VIRTUAL_HOSTING", "FALSE")}


@contextmanager
def gdal_env(**overrides: Any) -> Iterator[None]:
    """Run the body with geogla's GDAL settings (plus ``overrides``) in force."""
    with rasterio.Env(**{**gdal_options(), **overrides}):
        yield

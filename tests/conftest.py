"""Shared fixtures: tiny georeferenced rasters built in code, and the real samples in ../shared/data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

# No model hub is reachable: a missing weight must fail at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TORCH_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
#: The bucket the loopback S3 server of :func:`s3_endpoint` starts with.
S3_BUCKET = "geogla-test"
SHARED_DATA = REPO.parent / "shared" / "data"


def write_geotiff(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633",
                  transform: Any = None, nodata: float | None = None, **profile: Any) -> Path:
    """Write ``data`` (bands, H, W) as a GeoTIFF; default 0.5 m pixels in UTM 33N."""
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    transform = transform if transform is not None else from_origin(500000.0, 5000000.0, 0.5, 0.5)
    meta: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height, "count": count,
                            "dtype": data.dtype, "transform": transform, "nodata": nodata}
    if crs is not None:
        meta["crs"] = crs
    meta.update(profile)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return path


def structured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image of a few large coloured regions with texture (3, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    region = ((yy // max(height // 3, 1)) * 3 + (xx // max(width // 3, 1))) % 4
    palette = np.array([[200, 60, 50], [40, 140, 40], [120, 120, 120], [30, 80, 200]], dtype=np.float64)
    img = palette[region].transpose(2, 0, 1) + rng.normal(0, 12, (3, height, width))
    return cast(np.ndarray, np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def scene_tif(tmp_path: Path) -> Path:
    """A 300 x 420 RGB GeoTIFF in EPSG:32633 with 0.5 m pixels (2 x 3 windows at crop 224, stride 112)."""
    return write_geotiff(tmp_path / "scene.tif", structured_rgb(300, 420))


@pytest.fixture
def shared_data() -> Path:
    """The real sample rasters; the test is skipped where ../shared/data is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS_* variables point at it meanwhile."""
    import s3fs

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in names}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        s3fs.S3FileSystem.clear_instance_cache()  # instances made before hold another endpoint
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(S3_BUCKET)
        yield endpoint
    finally:
        proc.kill()
        proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

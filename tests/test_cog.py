"""Tests of geogla.cog: COG layout, metadata, alignment, streaming and atomic writes."""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from geogla.classes import NODATA_CLASS, parse_classes
from geogla.cog import class_raster_qml, cog_info, write_class_cog, write_float_cog
from geogla.georef import GeoRef


def make_georef(height: int, width: int, crs: str | None = "EPSG:32633",
                res: float = 0.5) -> GeoRef:
    """A north-up GeoRef at 0.5 m in UTM 33N (or pixel coordinates when ``crs`` is None)."""
    if crs is None:
        return GeoRef(width=width, height=height, transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                      crs_wkt=None)
    transform = from_origin(500000.0, 5000000.0, res, res)
    return GeoRef(width=width, height=height, transform=tuple(transform)[:6],
                  crs_wkt=CRS.from_string(crs).to_wkt())


def make_classes(height: int, width: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """Blocky class ids with a nodata corner, so that overviews and nodata both matter."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, n_classes, size=(height // 32 + 1, width // 32 + 1), dtype=np.uint8)
    arr = np.kron(coarse, np.ones((32, 32), dtype=np.uint8))[:height, :width].copy()
    arr[: height // 5, : width // 7] = NODATA_CLASS
    return arr


class FailingArray:
    """A (height, width) uint8 array-like whose third block read raises, like a dying worker."""

    def __init__(self, data: np.ndarray, fail_at: int = 3) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads = 0
        self.fail_at = fail_at

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads += 1
        if self.reads == self.fail_at:
            raise RuntimeError("block read failed")
        out: np.ndarray = self.data[key]
        return out


class CountingArray:
    """Records the size of every read, to check that the writer never reads the whole array."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.max_read = 0

    def __getitem__(self, key: Any) -> np.ndarray:
        out: np.ndarray = self.data[key]
        self.max_read = max(self.max_read, out.size)
        return out


CLASSES = parse_classes("building,tree,road,water")


def test_class_cog_is_valid_and_aligned(tmp_path: Path) -> None:
    georef = make_georef(1536, 2048)
    arr = make_classes(1536, 2048, len(CLASSES))
    counting = CountingArray(arr)
    out = tmp_path / "classes.tif"
    write_class_cog(out, counting, georef, CLASSES)

    assert counting.max_read <= 512 * 512
    info = cog_info(out)
    assert info["layout"] == "COG"
    assert info["compression"] == "DEFLATE"
    assert info["dtype"] == "uint8" and info["count"] == 1
    assert info["block_shapes"] == [(512, 512)]
    assert info["overviews"] == [2, 4]
    assert info["nodata"] == NODATA_CLASS
    assert CRS.from_wkt(info["crs_wkt"]) == georef.crs
    assert info["transform"] == pytest.approx(georef.transform)
    assert info["descriptions"] == ["class id"]
    tags = info["tags"]
    assert json.loads(tags["GEOGLA_CLASSES"]) == list(CLASSES.names)
    for i, name in enumerate(CLASSES.names):
        assert tags[f"CLASS_{i}"] == name
    cmap = info["colormap"]
    for i, colour in enumerate(CLASSES.colours):
        assert cmap[i] == (*colour, 255)
    assert cmap[NODATA_CLASS] == (0, 0, 0, 0)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), arr)
        # Overviews hold class ids only (mode, never an average of ids).
        overview = src.read(1, out_shape=(384, 512))
        assert set(np.unique(overview)) <= set(range(len(CLASSES))) | {NODATA_CLASS}
    assert sorted(os.listdir(tmp_path)) == ["classes.tif"]


def test_class_cog_overviews_use_the_mode(tmp_path: Path) -> None:
    # In each 2x2 cell three pixels are class 3 and one is class 0: an average would give 0 or 1/2.
    arr = np.full((1024, 1024), 3, dtype=np.uint8)
    arr[::2, ::2] = 0
    out = tmp_path / "mode.tif"
    write_class_cog(out, arr, make_georef(1024, 1024), CLASSES)
    with rasterio.open(out) as src:
        assert src.overviews(1) == [2]
        np.testing.assert_array_equal(src.read(1, out_shape=(512, 512)), 3)


def test_class_cog_from_zarr_without_crs(tmp_path: Path) -> None:
    georef = make_georef(700, 600, crs=None)
    arr = make_classes(700, 600, len(CLASSES), seed=3)
    store = zarr.create_array(store=str(tmp_path / "classes.zarr"), shape=arr.shape,
                              chunks=(256, 256), dtype="uint8")
    store[:] = arr
    out = tmp_path / "nocrs.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)  # the writer hides them
        write_class_cog(out, store, georef, CLASSES)
    info = cog_info(out)
    assert info["layout"] == "COG"
    assert info["crs_wkt"] is None
    assert info["transform"] == pytest.approx(georef.transform)
    assert info["block_shapes"] == [(512, 512)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as src:
            np.testing.assert_array_equal(src.read(1), arr)


def test_class_cog_geographic_crs(tmp_path: Path) -> None:
    georef = make_georef(300, 400, crs="EPSG:4326", res=1e-5)
    arr = make_classes(300, 400, len(CLASSES), seed=5)
    out = tmp_path / "wgs84.tif"
    write_class_cog(out, arr, georef, CLASSES)
    info = cog_info(out)
    assert CRS.from_wkt(info["crs_wkt"]) == CRS.from_epsg(4326)
    assert info["transform"] == pytest.approx(georef.transform)
    assert info["overviews"] == []  # smaller than one block: nothing to overview
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), arr)


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    georef = make_georef(1536, 2048)
    failing = FailingArray(make_classes(1536, 2048, len(CLASSES)), fail_at=3)
    out = tmp_path / "classes.tif"
    with pytest.raises(RuntimeError, match="block read failed"):
        write_class_cog(out, failing, georef, CLASSES)
    assert failing.reads == 3
    assert os.listdir(tmp_path) == []


def test_failure_keeps_a_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "classes.tif"
    out.write_bytes(b"previous run")
    with pytest.raises(RuntimeError):
        write_class_cog(out, FailingArray(make_classes(1536, 2048, 4)), make_georef(1536, 2048),
                        CLASSES)
    assert out.read_bytes() == b"previous run"
    assert os.listdir(tmp_path) == ["classes.tif"]


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_class_cog(tmp_path / "x.tif", np.zeros((10, 11), np.uint8), make_georef(11, 10),
                        CLASSES)
    assert os.listdir(tmp_path) == []


def test_float_cog(tmp_path: Path) -> None:
    georef = make_georef(1100, 1030)
    rng = np.random.default_rng(1)
    probs = rng.random((3, 1100, 1030), dtype=np.float32)
    probs[:, :10, :10] = np.nan
    out = tmp_path / "probs.tif"
    write_float_cog(out, probs, georef, ["building", "tree", "road"], nodata=float("nan"),
                    tags={"GEOGLA_KIND": "probability"})
    info = cog_info(out)
    assert info["layout"] == "COG"
    assert info["dtype"] == "float32" and info["count"] == 3
    assert info["block_shapes"] == [(512, 512)] * 3
    assert info["overviews"] == [2, 4]  # 1100 / 2 rows still exceed one block
    assert info["descriptions"] == ["building", "tree", "road"]
    assert json.loads(info["tags"]["GEOGLA_BANDS"]) == ["building", "tree", "road"]
    assert info["tags"]["GEOGLA_KIND"] == "probability"
    assert info["colormap"] is None
    assert np.isnan(info["nodata"])
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), probs)


def test_uint8_band_cog_and_dtype_check(tmp_path: Path) -> None:
    georef = make_georef(64, 80)
    data = (np.arange(2 * 64 * 80) % 251).astype(np.uint8).reshape(2, 64, 80)
    write_float_cog(tmp_path / "u8.tif", data, georef, ["a", "b"])
    with rasterio.open(tmp_path / "u8.tif") as src:
        np.testing.assert_array_equal(src.read(), data)
    with pytest.raises(ValueError, match="float32 or uint8"):
        write_float_cog(tmp_path / "f64.tif", data.astype(np.float64), georef, ["a", "b"])
    with pytest.raises(ValueError, match="band descriptions"):
        write_float_cog(tmp_path / "names.tif", data, georef, ["a"])
    assert sorted(os.listdir(tmp_path)) == ["u8.tif"]


@pytest.mark.parametrize("count", [3, 4])
def test_probability_cog_bands_are_grey_masked_and_scaled(tmp_path: Path, count: int) -> None:
    # GDAL makes 3 or 4 uint8 bands RGB(A) by default: the fourth class was an alpha band that
    # dataset_mask() returned and QGIS drew as transparency
    georef = make_georef(600, 700)
    probs = np.random.default_rng(0).integers(0, 256, (count, 600, 700)).astype(np.uint8)
    valid = np.ones((600, 700), dtype=bool)
    valid[:100] = False
    valid[300:320, 650:] = False
    names = ["building", "tree", "road", "water"][:count]
    out = tmp_path / "p.tif"
    write_float_cog(out, probs, georef, names, valid=valid, scale=1 / 255)
    with rasterio.open(out) as src:
        assert src.colorinterp[0] == ColorInterp.gray
        assert set(src.colorinterp[1:]) <= {ColorInterp.undefined}
        assert src.descriptions == tuple(names)
        assert src.scales == (1 / 255,) * count and src.offsets == (0.0,) * count
        np.testing.assert_array_equal(src.dataset_mask() > 0, valid)
        np.testing.assert_array_equal(src.read(), probs)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert sorted(os.listdir(tmp_path)) == ["p.tif"]  # the mask is internal: no sidecar


def test_class_raster_style_names_every_class_in_its_colour() -> None:
    classes = parse_classes("building,(tree),say \"hi\" & <co>")
    qml = class_raster_qml(classes)
    assert qml.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(qml.split("\n", 1)[1])
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = root.findall("pipe/rasterrenderer/colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == list(classes.names)
    assert [e.get("value") for e in entries] == ["0", "1", "2"]  # nodata 255 has no entry: transparent
    assert [e.get("color") for e in entries] == ["#{:02x}{:02x}{:02x}".format(*c) for c in classes.colours]

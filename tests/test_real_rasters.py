"""The real sample rasters of ../shared/data through the whole ``geogla run`` command.

Each scene runs once with the tiny preset and random weights (the labels are meaningless; the
geometry is what is checked): the class COG lies on the input's grid, its nodata pixels are
exactly the input's, the GeoPackage's areas are square metres (square pixels without a CRS) and
its polygons rasterize back onto the class raster without touching nodata.
"""

from __future__ import annotations

import math
import sqlite3
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import CRS as ProjCRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes

from geogla.cli import main
from tests.conftest import SHARED_DATA
from tests.test_run import rasterize_gpkg

pytestmark = pytest.mark.data

ARGS = ["--classes", "building,tree,road", "--model", "tiny", "--weights", "random"]
CLASS_NAMES = ["building", "tree", "road"]

# Globbed when the data are here; the names below keep the test ids stable (and skipping) elsewhere.
_GEOTIFFS = sorted(p.name for p in (SHARED_DATA / "geotiffs").glob("*.tif")) or [
    "detectree_lausanne_big_img_1091-322_00.tif", "naip_m_4709963_se_14_1_20200831_5m.tif",
    "openearthmap_koeln_50.tif", "rasterio_RGB.byte.tif"]
GEOREFERENCED = [f"geotiffs/{name}" for name in _GEOTIFFS] + [
    "spacenet3_roads_vegas/images/road_mask_input.tif"]
DUBAI = "dubai_aerial/images/tile2_image_part_001.jpg"  # 509 x 544, the smallest of the set


def _run(scene: Path, out: Path) -> int:
    return main(["run", str(scene), "-o", str(out), *ARGS])


def _read_layers(gpkg: Path) -> dict[str, gpd.GeoDataFrame]:
    """Every polygon layer of ``gpkg`` (the ``layer_styles`` table left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return {name: pyogrio.read_dataframe(gpkg, layer=name)
                for name, geometry_type in pyogrio.list_layers(gpkg) if geometry_type is not None}


def _layer_descriptions(gpkg: Path) -> dict[str, str]:
    with sqlite3.connect(gpkg) as conn:
        rows = conn.execute("SELECT table_name, description FROM gpkg_contents WHERE data_type = 'features'")
        result = dict(rows.fetchall())
    conn.close()
    return result


def _nodata_region(mask: np.ndarray, transform: rasterio.Affine) -> shapely.Geometry:
    """The pixels where ``mask`` is 0, as one (multi)polygon in the coordinates of ``transform``."""
    invalid = (mask == 0).astype(np.uint8)
    polys = [shapely.geometry.shape(g) for g, v in shapes(invalid, mask=invalid.astype(bool),
                                                           transform=transform) if v == 1]
    return shapely.union_all(polys)


@pytest.mark.parametrize("relpath", GEOREFERENCED)
def test_real_georeferenced_raster(relpath: str, shared_data: Path, tmp_path: Path) -> None:
    scene = shared_data / relpath
    out = tmp_path / "out"
    assert _run(scene, out) == 0
    cog, gpkg = out / f"{scene.stem}.classes.tif", out / f"{scene.stem}.gpkg"

    with rasterio.open(scene) as src, rasterio.open(cog) as dst:
        # The class COG lies on the input's grid.
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        classes = dst.read(1)
        valid = src.dataset_mask() > 0
        # Nodata is exactly the input's nodata (the per-dataset mask: nodata value, mask or alpha).
        nodata = classes == 255
        assert np.array_equal(nodata, ~valid), (
            f"{int((nodata & valid).sum())} valid pixels got 255, "
            f"{int((~nodata & ~valid).sum())} nodata pixels got a class")
        assert set(np.unique(classes[valid]).tolist()) <= {0, 1, 2}
        burned = rasterize_gpkg(gpkg, dst)
        transform, crs = dst.transform, dst.crs

    # Polygons rasterized back (pixel centres) reproduce the class raster.
    agreement = float((burned == classes).mean())
    assert agreement >= 0.99, f"polygons reproduce only {agreement:.4%} of the class raster"
    # ... and none lies on nodata: not at a pixel centre, nor by any area.
    assert np.all(burned[nodata] == 255), f"{int((burned[nodata] != 255).sum())} nodata pixels are covered"
    layers = _read_layers(gpkg)
    assert layers, "the GeoPackage has no polygon layer"
    everything = np.concatenate([df.geometry.to_numpy() for df in layers.values()])
    if nodata.any():
        region = _nodata_region(valid.astype(np.uint8), transform)
        overlap = float(shapely.area(shapely.intersection(everything, region)).sum())
        pixel_area = abs(transform.determinant)
        assert overlap <= 1e-6 * pixel_area, f"polygons cover {overlap / pixel_area:.3g} pixels of nodata"

    descriptions = _layer_descriptions(gpkg)
    for name, df in layers.items():
        assert ProjCRS.from_user_input(df.crs) == ProjCRS.from_user_input(crs.to_wkt())
        assert set(df["class_name"]) == {name} and name in CLASS_NAMES
        assert (df["class_id"] == CLASS_NAMES.index(name)).all()
        assert "square metres" in descriptions[name]
        area = df["area"].to_numpy()
        assert np.all(area > 0)
        if df.crs.is_geographic:
            # Independent check: each polygon in its UTM zone, planar area there.
            utm_area = df.geometry.to_crs(df.estimate_utm_crs()).area.to_numpy()
            rel = np.abs(area - utm_area) / utm_area
            assert rel.max() < 0.005, f"{name}: area off the UTM area by up to {rel.max():.3%}"
            assert math.isclose(area.sum(), utm_area.sum(), rel_tol=0.005)
        else:
            # A projected CRS in metres: the attribute is the planar area.
            assert df.crs.axis_info[0].unit_name == "metre"
            np.testing.assert_allclose(area, df.geometry.area.to_numpy(), rtol=1e-9)


def test_real_jpeg_without_crs_runs_in_pixel_coordinates(shared_data: Path, tmp_path: Path) -> None:
    scene = shared_data / DUBAI
    out = tmp_path / "out"
    assert _run(scene, out) == 0
    cog, gpkg = out / f"{scene.stem}.classes.tif", out / f"{scene.stem}.gpkg"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(scene) as src, rasterio.open(cog) as dst:
            assert src.crs is None and dst.crs is None
            assert (dst.width, dst.height) == (src.width, src.height)
            classes = dst.read(1)
            assert np.all(classes != 255)  # a JPEG has no nodata
            # Whatever pixel transform the COG carries, the polygons must be in its coordinates.
            burned = rasterize_gpkg(gpkg, dst)
            transform = dst.transform
    assert transform.is_rectilinear and abs(abs(transform.determinant) - 1.0) < 1e-12, transform
    agreement = float((burned == classes).mean())
    assert agreement >= 0.99, f"polygons reproduce only {agreement:.4%} of the class raster"

    # The extent in the COG's own coordinates, whichever way its axes point.
    xs, ys = zip(*(transform @ corner for corner in
                   [(0, 0), (classes.shape[1], 0), (0, classes.shape[0]), classes.shape[::-1]]), strict=True)
    left, right, bottom, top = min(xs), max(xs), min(ys), max(ys)
    layers = _read_layers(gpkg)
    assert layers
    descriptions = _layer_descriptions(gpkg)
    for name, df in layers.items():
        assert df.crs is None
        assert pyogrio.read_info(gpkg, layer=name)["crs"] is None
        minx, miny, maxx, maxy = df.total_bounds
        assert left <= minx and maxx <= right and bottom <= miny and maxy <= top, (
            f"{name}: polygons span {df.total_bounds} outside the pixel extent {(left, bottom, right, top)}")
        assert "square pixels" in descriptions[name]
        np.testing.assert_allclose(df["area"].to_numpy(),
                                   df.geometry.area.to_numpy() / abs(transform.determinant), rtol=1e-9)

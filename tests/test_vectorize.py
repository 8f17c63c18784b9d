"""Tests of geogla.vectorize: seam merging, exact rasterization, areas and the styled GeoPackage."""

from __future__ import annotations

import os
import sqlite3
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.transform import from_origin
from shapely.geometry import Polygon

from geogla.classes import NODATA_CLASS, ClassList, parse_classes
from geogla.errors import ClassSpecError
from geogla.georef import GeoRef
from geogla.vectorize import (
    STYLE_TABLE,
    area_model,
    iter_polygons,
    layer_names,
    layer_qml,
    layer_sld,
    polygonize,
    write_geopackage,
)

CLASSES = parse_classes("building,tree,road,water")


def utm_georef(height: int, width: int, res: float = 0.5) -> GeoRef:
    """North-up, ``res`` metres per pixel, in UTM zone 33N."""
    return GeoRef(width=width, height=height,
                  transform=tuple(from_origin(500000.0, 5000000.0, res, res))[:6],
                  crs_wkt=CRS.from_epsg(32633).to_wkt())


def wgs84_georef(height: int, width: int, lon: float = 10.0, lat: float = 45.0,
                 res: float = 1e-5) -> GeoRef:
    """North-up, ``res`` degrees per pixel, in EPSG:4326, top-left corner at (lon, lat)."""
    return GeoRef(width=width, height=height,
                  transform=tuple(from_origin(lon, lat, res, res))[:6],
                  crs_wkt=CRS.from_epsg(4326).to_wkt())


def pixel_georef(height: int, width: int) -> GeoRef:
    """No CRS: pixel coordinates."""
    return GeoRef(width=width, height=height, transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), crs_wkt=None)


def seam_fixture() -> np.ndarray:
    """50 x 70 classes whose shapes cross the seams of a 16-pixel chunking.

    * class 1: a 20 x 30 rectangle over rows 10-29, cols 10-39 (crosses seams 16 and 32 both ways);
    * class 2: a 16 x 16 ring around the chunk corner (32, 48) with a class-0 hole;
    * class 3: two pixels touching diagonally at the chunk corner (16, 64): two polygons;
    * class 0 elsewhere, and nodata in rows 44-49, cols 0-24 (crossing the seam at col 16).
    """
    arr = np.zeros((50, 70), dtype=np.uint8)
    arr[10:30, 10:40] = 1
    arr[24:40, 40:56] = 2
    arr[28:36, 44:52] = 0
    arr[15, 63] = 3
    arr[16, 64] = 3
    arr[44:50, 0:25] = NODATA_CLASS
    return arr


def rasterized(polys: dict[int, list[Polygon]], georef: GeoRef) -> np.ndarray:
    pairs = [(geom, class_id) for class_id, geoms in polys.items() for geom in geoms]
    if not pairs:
        return np.full(georef.shape, NODATA_CLASS, dtype=np.uint8)
    burned: np.ndarray = rasterize(pairs, out_shape=georef.shape, transform=georef.affine, fill=NODATA_CLASS,
                                   dtype="uint8")
    return burned


def whole_raster_counts(arr: np.ndarray) -> dict[int, int]:
    """Polygon count per class from one GDAL polygonization of the whole raster."""
    counts: dict[int, int] = {}
    for _, value in shapes(arr, mask=arr != NODATA_CLASS, connectivity=4):
        counts[int(value)] = counts.get(int(value), 0) + 1
    return dict(sorted(counts.items()))


def counts(polys: dict[int, list[Polygon]]) -> dict[int, int]:
    return {k: len(v) for k, v in polys.items()}


class CountingArray:
    """Records the largest read, to check that polygonizing never reads the whole raster."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.max_read = data, data.shape, data.dtype, 0

    def __getitem__(self, key: Any) -> np.ndarray:
        out: np.ndarray = self.data[key]
        self.max_read = max(self.max_read, out.size)
        return out


# ------------------------------------------------------------------------------------------
# Polygonizing


@pytest.mark.parametrize("chunk", [16, 7, 1024])
def test_polygons_reproduce_the_raster_across_seams(chunk: int) -> None:
    arr = seam_fixture()
    georef = utm_georef(*arr.shape)
    source = CountingArray(arr)
    polys = polygonize(source, georef, CLASSES, chunk=chunk)

    assert source.max_read <= chunk * chunk
    np.testing.assert_array_equal(rasterized(polys, georef), arr)
    assert counts(polys) == whole_raster_counts(arr)
    assert all(g.is_valid and isinstance(g, Polygon) for v in polys.values() for g in v)
    # The rectangle crosses four seams and still is one polygon of 20 x 30 pixels.
    assert len(polys[1]) == 1 and polys[1][0].area == pytest.approx(20 * 30 * 0.25)
    # The ring around a chunk corner is one polygon with its hole.
    assert len(polys[2]) == 1 and len(polys[2][0].interiors) == 1
    assert polys[2][0].area == pytest.approx((16 * 16 - 8 * 8) * 0.25)
    # Pixels touching only at a corner are not 4-connected: two polygons, even across a seam.
    assert len(polys[3]) == 2


def test_shells_are_counter_clockwise() -> None:
    polys = polygonize(seam_fixture(), utm_georef(50, 70), CLASSES, chunk=16)
    assert all(g.exterior.is_ccw for v in polys.values() for g in v)


def test_random_rasters_match_whole_raster_polygonization() -> None:
    rng = np.random.default_rng(7)
    for _ in range(8):
        height, width = (int(v) for v in rng.integers(8, 48, size=2))
        cell = int(rng.integers(1, 5))
        coarse = rng.integers(0, 4, size=(height // cell + 1, width // cell + 1))
        arr = np.kron(coarse, np.ones((cell, cell), dtype=np.int64))[:height, :width].astype(np.uint8)
        arr[arr == 3] = NODATA_CLASS
        arr[rng.random((height, width)) < 0.05] = NODATA_CLASS
        georef = pixel_georef(height, width)
        expected = whole_raster_counts(arr)
        for chunk in (2, 3, 5, 11):
            polys = polygonize(arr, georef, CLASSES, chunk=chunk)
            assert counts(polys) == expected
            np.testing.assert_array_equal(rasterized(polys, georef), arr)


def test_zarr_input_with_other_chunks(tmp_path: Path) -> None:
    arr = seam_fixture()
    store = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=arr.shape, chunks=(10, 10),
                              dtype="uint8")
    store[:] = arr
    georef = utm_georef(*arr.shape)
    polys = polygonize(store, georef, CLASSES, chunk=16)
    np.testing.assert_array_equal(rasterized(polys, georef), arr)


def test_nodata_never_becomes_a_polygon() -> None:
    georef = utm_georef(40, 40)
    assert polygonize(np.full((40, 40), NODATA_CLASS, np.uint8), georef, CLASSES, chunk=16) == {}
    arr = seam_fixture()
    polys = polygonize(arr, utm_georef(*arr.shape), CLASSES, chunk=16)
    nodata_px = Polygon([(500000.0, 5000000.0 - 22.0), (500012.5, 5000000.0 - 22.0),
                         (500012.5, 5000000.0 - 25.0), (500000.0, 5000000.0 - 25.0)])
    assert all(g.intersection(nodata_px).area == 0 for v in polys.values() for g in v)


def test_bad_inputs_are_refused() -> None:
    georef = utm_georef(20, 20)
    with pytest.raises(ValueError, match="shape"):
        polygonize(np.zeros((20, 21), np.uint8), georef, CLASSES)
    with pytest.raises(ValueError, match="class id 7"):
        polygonize(np.full((20, 20), 7, np.uint8), georef, CLASSES)
    with pytest.raises(ValueError, match="chunk"):
        polygonize(np.zeros((20, 20), np.uint8), georef, CLASSES, chunk=0)


def test_min_area_drops_small_polygons() -> None:
    arr = np.zeros((40, 40), dtype=np.uint8)
    arr[2:4, 2:4] = 1  # 4 px = 1 m^2
    arr[20:30, 14:24] = 1  # 100 px = 25 m^2, across the seam at 16
    polys = polygonize(arr, utm_georef(40, 40), CLASSES, chunk=16, min_area=2.0)
    assert [g.area for g in polys[1]] == [pytest.approx(25.0)]
    assert len(polys[0]) == 1


def test_simplify_keeps_a_valid_edge_matched_coverage() -> None:
    # A diagonal staircase between two classes, crossing several seams.
    rows, cols = np.indices((64, 64))
    arr = np.where(rows > cols, 1, 0).astype(np.uint8)
    arr[50:, :8] = NODATA_CLASS
    georef = utm_georef(64, 64)
    raw = polygonize(arr, georef, CLASSES, chunk=16)
    simple = polygonize(arr, georef, CLASSES, chunk=16, simplify=1.0)  # 1 m = 2 px
    geoms = [g for v in simple.values() for g in v]
    assert all(g.is_valid for g in geoms)
    assert counts(simple) == counts(raw) == {0: 1, 1: 1}
    # Edge-matched: no overlap, no gap, the valid area unchanged.
    total = sum(g.area for g in geoms)
    assert shapely.union_all(geoms).area == pytest.approx(total)
    assert total == pytest.approx(float((arr != NODATA_CLASS).sum()) * 0.25)
    vertices = sum(shapely.get_num_coordinates(geoms))
    assert vertices < sum(shapely.get_num_coordinates([g for v in raw.values() for g in v])) / 4


def test_iter_polygons_streams_pairs() -> None:
    arr = seam_fixture()
    pairs = list(iter_polygons(arr, utm_georef(*arr.shape), CLASSES, chunk=16))
    assert sorted({c for c, _ in pairs}) == [0, 1, 2, 3]
    assert len(pairs) == sum(whole_raster_counts(arr).values())


# ------------------------------------------------------------------------------------------
# Areas


def square(georef: GeoRef, row: int, col: int, size: int) -> np.ndarray:
    arr = np.full(georef.shape, NODATA_CLASS, dtype=np.uint8)
    arr[row:row + size, col:col + size] = 1
    return arr


def test_area_projected_metres() -> None:
    georef = utm_georef(30, 30)
    polys = polygonize(square(georef, 5, 5, 10), georef, CLASSES)
    model = area_model(georef)
    assert model.units == "m2"
    assert model.areas(polys[1]) == pytest.approx([25.0])
    assert model.pixel_size == pytest.approx(0.5)


def test_area_projected_feet() -> None:
    feet = 0.3048006096012192  # US survey foot
    georef = GeoRef(width=30, height=30, transform=tuple(from_origin(1e6, 2e5, 1.0, 1.0))[:6],
                    crs_wkt=CRS.from_epsg(2263).to_wkt())
    polys = polygonize(square(georef, 5, 5, 10), georef, CLASSES)
    assert area_model(georef).areas(polys[1]) == pytest.approx([100 * feet**2])


def test_area_geographic_is_ground_metres() -> None:
    georef = wgs84_georef(200, 200, lon=10.0, lat=45.05)
    polys = polygonize(square(georef, 50, 50, 100), georef, CLASSES)
    model = area_model(georef)
    assert model.units == "m2"
    area = float(model.areas(polys[1])[0])
    # The square spans 0.001 degrees each way around 45.045 N: about 78.8 m x 111.1 m.
    lat = np.radians(45.0445)
    metres_per_degree_lat = 111132.95 - 559.82 * np.cos(2 * lat) + 1.175 * np.cos(4 * lat)
    metres_per_degree_lon = 111412.84 * np.cos(lat) - 93.5 * np.cos(3 * lat)
    expected = 0.001 * metres_per_degree_lat * 0.001 * metres_per_degree_lon
    assert area == pytest.approx(expected, rel=0.01)
    geodesic, _ = Geod(ellps="WGS84").geometry_area_perimeter(polys[1][0])
    assert area == pytest.approx(abs(geodesic), rel=1e-4)
    # The geometry itself stays in degrees.
    assert polys[1][0].bounds == pytest.approx((10.0005, 45.0495 - 0.001, 10.0015, 45.0495))


def test_area_without_crs_is_square_pixels() -> None:
    georef = pixel_georef(30, 30)
    polys = polygonize(square(georef, 5, 5, 10), georef, CLASSES)
    model = area_model(georef)
    assert model.units == "px2" and "pixels" in model.description
    assert model.areas(polys[1]) == pytest.approx([100.0])


# ------------------------------------------------------------------------------------------
# GeoPackage


def read_styles(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM layer_styles ORDER BY id")]
    conn.close()
    return rows


def gpkg_contents(path: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT table_name, data_type, description FROM gpkg_contents").fetchall()
    conn.close()
    return {name: (kind, description) for name, kind, description in rows}


def test_geopackage_layers_attributes_and_styles(tmp_path: Path) -> None:
    arr = seam_fixture()
    arr[arr == 3] = 0  # class 3 ('water') absent
    georef = utm_georef(*arr.shape)
    polys = polygonize(arr, georef, CLASSES, chunk=16)
    out = tmp_path / "scene.gpkg"
    write_geopackage(out, polys, georef, CLASSES)

    assert sorted(os.listdir(tmp_path)) == ["scene.gpkg"]
    layers = {name: kind for name, kind in pyogrio.list_layers(out)}
    assert layers == {"building": "Polygon", "tree": "Polygon", "road": "Polygon", "layer_styles": None}
    for class_id in (0, 1, 2):
        name = CLASSES.names[class_id]
        frame = pyogrio.read_dataframe(out, layer=name)
        assert list(frame.columns) == ["class_id", "class_name", "area", "geometry"]
        assert (frame["class_id"] == class_id).all() and (frame["class_name"] == name).all()
        assert frame.crs is not None and CRS.from_user_input(frame.crs) == CRS.from_epsg(32633)
        np.testing.assert_allclose(frame["area"], frame.geometry.area)  # metres, 1:1 in UTM
        assert len(frame) == len(polys[class_id])
    assert pyogrio.read_dataframe(out, layer="tree")["area"].iloc[0] == pytest.approx(150.0)

    contents = gpkg_contents(out)
    assert contents["layer_styles"][0] == "attributes"
    assert contents["tree"][0] == "features" and "square metres" in contents["tree"][1]
    styles = read_styles(out)
    assert [r["f_table_name"] for r in styles] == ["building", "tree", "road"]
    for row in styles:
        class_id = CLASSES.names.index(row["f_table_name"])
        r, g, b = CLASSES.colours[class_id]
        assert row["f_geometry_column"] == "geom"
        assert row["f_table_schema"] == "" and row["f_table_catalog"] == ""
        assert row["useAsDefault"] == 1 and row["styleName"] == row["f_table_name"]
        qml = ET.fromstring(row["styleQML"].split("\n", 1)[1])
        assert qml.tag == "qgis"
        fill = qml.find("renderer-v2/symbols/symbol/layer")
        assert fill is not None and fill.get("class") == "SimpleFill"
        option = fill.find("Option/Option[@name='color']")
        assert option is not None and option.get("value") == f"{r},{g},{b},255"
        prop = fill.find("prop[@k='color']")
        assert prop is not None and prop.get("v") == f"{r},{g},{b},255"
        sld = ET.fromstring(row["styleSLD"].split("\n", 1)[1])
        assert f"#{r:02x}{g:02x}{b:02x}" in ET.tostring(sld, encoding="unicode")
    # GDAL lists the style table and reads it back as a plain table.
    table = pyogrio.read_dataframe(out, layer="layer_styles")
    assert len(table) == 3 and "styleQML" in table.columns


def test_geopackage_geographic_and_pixel_crs(tmp_path: Path) -> None:
    georef = wgs84_georef(40, 40)
    arr = square(georef, 4, 4, 20)
    write_geopackage(tmp_path / "wgs.gpkg", polygonize(arr, georef, CLASSES), georef, CLASSES)
    frame = pyogrio.read_dataframe(tmp_path / "wgs.gpkg", layer="tree")
    assert CRS.from_user_input(frame.crs) == CRS.from_epsg(4326)
    assert frame["area"].iloc[0] == pytest.approx(float(area_model(georef).areas(frame.geometry)[0]))
    assert 0.85 < frame["area"].iloc[0] / 400 < 0.9  # a pixel here is about 0.79 m x 1.11 m

    georef = pixel_georef(40, 40)
    write_geopackage(tmp_path / "px.gpkg", polygonize(arr, georef, CLASSES), georef, CLASSES)
    info = pyogrio.read_info(tmp_path / "px.gpkg", layer="tree")
    assert info["crs"] is None
    assert pyogrio.read_dataframe(tmp_path / "px.gpkg", layer="tree")["area"].iloc[0] == 400.0
    assert "pixels" in gpkg_contents(tmp_path / "px.gpkg")["tree"][1]


def test_geopackage_when_everything_is_nodata(tmp_path: Path) -> None:
    georef = utm_georef(20, 20)
    polys = polygonize(np.full((20, 20), NODATA_CLASS, np.uint8), georef, CLASSES)
    out = tmp_path / "empty.gpkg"
    write_geopackage(out, polys, georef, CLASSES)
    assert [list(x) for x in pyogrio.list_layers(out)] == [["layer_styles", None]]
    assert read_styles(out) == []
    assert set(gpkg_contents(out)) == {"layer_styles"}


def test_geopackage_streamed_in_batches(tmp_path: Path) -> None:
    arr = seam_fixture()
    georef = utm_georef(*arr.shape)
    streamed = tmp_path / "streamed.gpkg"
    write_geopackage(streamed, iter_polygons(arr, georef, CLASSES, chunk=16), georef, CLASSES, batch=2)
    whole = polygonize(arr, georef, CLASSES, chunk=16)
    for class_id, geoms in whole.items():
        frame = pyogrio.read_dataframe(streamed, layer=CLASSES.names[class_id])
        assert len(frame) == len(geoms)
        assert shapely.union_all(frame.geometry.values).equals(shapely.union_all(geoms))
    assert len(read_styles(streamed)) == len(whole)


def test_geopackage_buffers_at_most_batch_polygons_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arr = seam_fixture()
    georef = utm_georef(*arr.shape)
    pairs = list(iter_polygons(arr, georef, CLASSES, chunk=16))
    assert len({c for c, _ in pairs}) >= 3  # several layers buffer at once
    taken = 0
    written = 0
    held: list[int] = []
    real_write = pyogrio.write_dataframe

    def source() -> Iterator[tuple[int, Polygon]]:
        nonlocal taken
        for pair in pairs:
            taken += 1
            yield pair

    def write(frame: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal written
        held.append(taken - written)  # polygons taken but not yet written, this one included
        written += len(frame)
        real_write(frame, *args, **kwargs)

    monkeypatch.setattr(pyogrio, "write_dataframe", write)
    write_geopackage(tmp_path / "scene.gpkg", source(), georef, CLASSES, batch=3)
    assert written == len(pairs)
    assert max(held) <= 3


def test_geopackage_failure_leaves_nothing(tmp_path: Path) -> None:
    arr = seam_fixture()
    georef = utm_georef(*arr.shape)
    out = tmp_path / "scene.gpkg"

    def failing() -> Iterator[tuple[int, Polygon]]:
        for n, pair in enumerate(iter_polygons(arr, georef, CLASSES, chunk=16)):
            if n == 5:
                raise RuntimeError("worker died")
            yield pair

    with pytest.raises(RuntimeError, match="worker died"):
        write_geopackage(out, failing(), georef, CLASSES, batch=2)  # batch 2: layers were written
    assert os.listdir(tmp_path) == []

    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match="class id 9"):
        write_geopackage(out, {9: [Polygon([(0, 0), (1, 0), (1, 1)])]}, georef, CLASSES)
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["scene.gpkg"]


def test_reserved_class_names_get_a_prefix(tmp_path: Path) -> None:
    classes = ClassList(names=("layer_styles", "gpkg_thing", "tree"), synonyms=((), (), ()),
                        colours=((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    assert layer_names(classes) == {0: "class_layer_styles", 1: "class_gpkg_thing", 2: "tree"}
    arr = np.zeros((10, 30), dtype=np.uint8)
    arr[:, 10:20] = 1
    arr[:, 20:] = 2
    georef = utm_georef(10, 30)
    write_geopackage(tmp_path / "r.gpkg", polygonize(arr, georef, classes), georef, classes)
    names = sorted(str(n) for n, _ in pyogrio.list_layers(tmp_path / "r.gpkg"))
    assert names == ["class_gpkg_thing", "class_layer_styles", "layer_styles", "tree"]


# Class names as the class-list syntax accepts them: no comma or "|" (separators), not blank,
# distinct case-insensitively; any other Unicode, SQL-looking ones and ones that collide once
# made safe included.
_CLASS_NAME = st.one_of(
    st.text(min_size=1, max_size=12).map(str.strip),
    st.sampled_from(["(tree)", "'); DROP TABLE x;--", 'say "hi"', "\U0001f333 tree", "gpkg_a", "class_gpkg_a",
                     "layer_styles", "tree", "Tree ", "tree_2", "-x", ".x", "#1", "\u00e9t\u00e9", "a b"]),
).filter(lambda n: n and "," not in n and "|" not in n
         and not any(unicodedata.category(c) in ("Cc", "Cs") for c in n))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_CLASS_NAME, min_size=1, max_size=6, unique_by=lambda n: n.strip().lower()))
def test_every_class_keeps_a_layer_of_its_own_whatever_its_name(tmp_path: Path, names: list[str]) -> None:
    classes = parse_classes(",".join(names))
    layers = layer_names(classes)
    assert len({n.casefold() for n in layers.values()}) == len(classes)  # SQLite: case-insensitive
    width = 4 * len(classes)
    arr = np.repeat(np.arange(len(classes), dtype=np.uint8), 4)[None].repeat(6, axis=0)
    georef = utm_georef(6, width)
    out = tmp_path / f"n{abs(hash(tuple(names)))}.gpkg"
    write_geopackage(out, polygonize(arr, georef, classes), georef, classes)
    written = {str(n) for n, _ in pyogrio.list_layers(out)} - {STYLE_TABLE}
    assert written == set(layers.values())
    for class_id, layer in layers.items():
        frame = pyogrio.read_dataframe(out, layer=layer)
        assert set(frame["class_name"]) == {classes.names[class_id]}
        assert set(frame["class_id"]) == {class_id}
    with sqlite3.connect(out) as conn:
        styled = [row[0] for row in conn.execute(f"SELECT f_table_name FROM {STYLE_TABLE}")]
    assert sorted(styled) == sorted(layers.values())


@pytest.mark.parametrize("empty", [False, True])
def test_geopackages_are_version_1_2(tmp_path: Path, empty: bool) -> None:
    # GDAL 3.6 (the QGIS of Debian 12) warns on every open of a GeoPackage 1.4, current GDAL's
    # default; 1.2 is read everywhere
    arr = np.full((6, 8), NODATA_CLASS if empty else 1, dtype=np.uint8)
    georef = utm_georef(6, 8)
    out = tmp_path / "v.gpkg"
    write_geopackage(out, polygonize(arr, georef, CLASSES), georef, CLASSES)
    with sqlite3.connect(out) as conn:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert application_id.to_bytes(4, "big") == b"GPKG" and user_version == 10200


def test_a_backslash_before_a_comma_or_a_control_character_is_refused() -> None:
    with pytest.raises(ClassSpecError, match="backslash before a comma"):
        parse_classes("tr\\,ee,road")
    for name in ("tr\x00ee", "tree\tcover", "\ud800"):
        with pytest.raises(ClassSpecError, match="control character"):
            parse_classes(f"road,{name}")


def test_qml_is_a_single_symbol_fill() -> None:
    qml = layer_qml((220, 40, 40))
    assert qml.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(qml.split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "singleSymbol"
    symbol = root.find("renderer-v2/symbols/symbol")
    assert symbol is not None and symbol.get("type") == "fill"
    sld = ET.fromstring(layer_sld("roads & <paths>", (1, 2, 3)).split("\n", 1)[1])
    assert "roads & <paths>" in [e.text for e in sld.iter()]

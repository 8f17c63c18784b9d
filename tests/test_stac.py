"""The STAC Item of a run's outputs (geogla.stac), read back through pystac's own model.

JSON-schema validation (``pystac.Item.validate``) needs the ``jsonschema`` package and the
extension schemas from stac-extensions.github.io; neither is available here (no network), so
:func:`test_schema_validation_where_possible` skips and the other tests check the fields
against the extension specs through pystac's extension classes instead.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import GetSchemaError
from rasterio.crs import CRS

from geogla.classes import ClassList, parse_classes
from geogla.errors import OutputError
from geogla.georef import GeoRef
from geogla.stac import (
    COG_MEDIA_TYPE,
    GPKG_MEDIA_TYPE,
    build_stac_item,
    parse_datetime,
    tiff_datetime,
    write_stac_item,
)

CLASSES = parse_classes("building,tree|forest,impervious surface")


def _georef(crs: str | None, transform: Affine, width: int = 400, height: int = 300) -> GeoRef:
    return GeoRef(width=width, height=height, transform=tuple(transform)[:6],
                  crs_wkt=CRS.from_user_input(crs).to_wkt() if crs else None)


UTM = _georef("EPSG:32633", Affine(0.5, 0, 500000.0, 0, -0.5, 5000000.0))
WGS84 = _georef("EPSG:4326", Affine(2.7e-6, 0, -115.2338, 0, -2.7e-6, 36.1423), 1300, 1300)
PIXELS = _georef(None, Affine.identity(), 509, 544)


def _outputs(folder: Path, stem: str = "scene") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cog, gpkg = folder / f"{stem}.classes.tif", folder / f"{stem}.gpkg"
    cog.write_bytes(b"cog")
    gpkg.write_bytes(b"gpkg")
    return cog, gpkg


def _write(tmp_path: Path, georef: GeoRef, classes: ClassList = CLASSES, **kwargs: object) -> Path:
    cog, gpkg = _outputs(tmp_path)
    item = tmp_path / "scene.stac.json"
    write_stac_item(item, build_stac_item(item, item_id="scene", cog_path=cog, gpkg_path=gpkg, georef=georef,
                                          class_list=classes, **kwargs))  # type: ignore[arg-type]
    return item


def test_utm_item_round_trips_with_footprint_projection_and_legend(tmp_path: Path) -> None:
    path = _write(tmp_path, UTM, properties={"geogla:model": "tiny"})
    raw = json.loads(path.read_text())
    item = pystac.Item.from_file(str(path))
    assert item.id == "scene"
    assert item.to_dict(include_self_link=False) == raw  # pystac's model keeps every field

    # Footprint: the four corners moved independently, the bbox around them (edges densified).
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    xs, ys = [500000.0, 500200.0, 500200.0, 500000.0], [5000000.0, 5000000.0, 4999850.0, 4999850.0]
    lon, lat = to_wgs84.transform(xs, ys)
    assert item.bbox is not None
    west, south, east, north = item.bbox
    np.testing.assert_allclose(
        [west, south, east, north], [min(lon), min(lat), max(lon), max(lat)], atol=1e-7
    )
    assert 14.99 < west < east < 15.01 and 45.1 < south < north < 45.2
    assert item.geometry is not None and item.geometry["type"] == "Polygon"
    ring = np.asarray(item.geometry["coordinates"][0])
    assert np.array_equal(ring[0], ring[-1]) and len(ring) >= 5
    assert ring[:, 0].min() == west and ring[:, 1].max() == north

    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32633" and proj.wkt2 is None
    assert proj.shape == [UTM.height, UTM.width]
    assert proj.transform == list(UTM.transform)
    assert proj.bbox == [500000.0, 4999850.0, 500200.0, 5000000.0]

    props = item.properties
    assert props["geogla:classes"] == ["building", "tree", "impervious surface"]
    assert props["geogla:model"] == "tiny" and props["geogla:version"]
    assert props["geogla:datetime_source"] == "processing"
    assert item.datetime is not None and abs(item.datetime - datetime.now(UTC)) < timedelta(minutes=5)


def test_assets_media_types_relative_hrefs_and_class_legend(tmp_path: Path) -> None:
    path = _write(tmp_path, UTM)
    item = pystac.Item.from_file(str(path))
    assert set(item.assets) == {"classes", "polygons"}
    classes, polygons = item.assets["classes"], item.assets["polygons"]
    assert classes.media_type == COG_MEDIA_TYPE == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert polygons.media_type == GPKG_MEDIA_TYPE == "application/geopackage+sqlite3"
    raw = json.loads(path.read_text())
    for key, asset in item.assets.items():
        assert asset.roles == ["data"]
        assert raw["assets"][key]["href"].startswith("./")  # relative to the Item's folder
        assert Path(asset.get_absolute_href() or "").is_file()
    assert Path(classes.get_absolute_href() or "") == tmp_path / "scene.classes.tif"
    assert not any(link.rel == "self" for link in pystac.Item.from_dict(raw).links)

    legend = ClassificationExtension.ext(classes).classes
    assert legend is not None
    assert [c.value for c in legend] == [0, 1, 2, 255]
    assert [c.title for c in legend[:3]] == list(CLASSES.names)
    assert [c.name for c in legend] == ["building", "tree", "impervious_surface", "nodata"]
    assert all(re.fullmatch(r"[0-9A-Za-z_-]+", c.name or "") for c in legend)
    assert [c.color_hint for c in legend[:3]] == ["DC2828", "146E1E", "C8C8C8"]
    assert [(int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in
            (c.color_hint or "" for c in legend[:3])] == list(CLASSES.colours)
    assert legend[3].nodata is True and not any(c.nodata for c in legend[:3])
    bands = RasterExtension.ext(classes).bands
    assert bands is not None and len(bands) == 1
    assert bands[0].nodata == 255 and bands[0].data_type == "uint8"


def test_probabilities_asset_and_outputs_in_another_folder(tmp_path: Path) -> None:
    cog, gpkg = _outputs(tmp_path / "out")
    probs = tmp_path / "out" / "scene.probabilities.tif"
    probs.write_bytes(b"p")
    path = tmp_path / "catalog" / "scene.json"
    path.parent.mkdir()
    write_stac_item(path, build_stac_item(path, item_id="scene", cog_path=cog, gpkg_path=gpkg, georef=UTM,
                                          class_list=CLASSES, probabilities_path=probs))
    raw = json.loads(path.read_text())
    assert raw["assets"]["probabilities"]["href"] == "../out/scene.probabilities.tif"
    item = pystac.Item.from_file(str(path))
    asset = item.assets["probabilities"]
    assert asset.media_type == COG_MEDIA_TYPE and asset.roles == ["data"]
    bands = raw["assets"]["probabilities"]["raster:bands"]
    assert [b["name"] for b in bands] == list(CLASSES.names)
    assert all(b["data_type"] == "uint8" and b["scale"] == 1 / 255 and b["offset"] == 0.0 for b in bands)
    for a in item.assets.values():
        assert Path(a.get_absolute_href() or "").resolve().is_file()


def test_absolute_hrefs_and_a_self_link_for_a_stac_api(tmp_path: Path) -> None:
    # A STAC API keeps the item's JSON, not its folder: relative hrefs would lose the files.
    cog, gpkg = _outputs(tmp_path / "out")
    path = tmp_path / "out" / "scene.json"
    write_stac_item(path, build_stac_item(path, item_id="scene", cog_path=cog, gpkg_path=gpkg, georef=UTM,
                                          class_list=CLASSES, absolute_hrefs=True))
    raw = json.loads(path.read_text())
    assert [link["href"] for link in raw["links"] if link["rel"] == "self"] == [path.resolve().as_posix()]
    for name, target in (("classes", cog), ("polygons", gpkg)):
        assert raw["assets"][name]["href"] == target.resolve().as_posix()
    # moved elsewhere, the item still finds its files
    moved = tmp_path / "elsewhere.json"
    moved.write_text(path.read_text())
    item = pystac.Item.from_file(str(moved))
    for asset in item.assets.values():
        assert Path(asset.get_absolute_href() or "").is_file()


def test_wgs84_item_bbox_is_the_grid_extent(tmp_path: Path) -> None:
    item = pystac.Item.from_file(str(_write(tmp_path, WGS84)))
    left, top = -115.2338, 36.1423
    right, bottom = left + 1300 * 2.7e-6, top - 1300 * 2.7e-6
    assert item.bbox is not None
    np.testing.assert_allclose(item.bbox, [left, bottom, right, top], rtol=0, atol=1e-12)
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:4326" and proj.shape == [1300, 1300]
    assert proj.bbox is not None
    np.testing.assert_allclose(proj.bbox, [left, bottom, right, top], rtol=0, atol=1e-12)


def test_scene_without_crs_has_null_geometry_and_no_bbox(tmp_path: Path) -> None:
    path = _write(tmp_path, PIXELS)
    raw = json.loads(path.read_text())
    assert raw["geometry"] is None and "bbox" not in raw
    assert "proj:code" in raw["properties"] and raw["properties"]["proj:code"] is None
    assert "proj:bbox" not in raw["properties"] and "proj:wkt2" not in raw["properties"]
    item = pystac.Item.from_file(str(path))
    assert item.geometry is None and item.bbox is None
    proj = ProjectionExtension.ext(item)
    assert proj.shape == [544, 509] and proj.transform == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert ClassificationExtension.ext(item.assets["classes"]).classes is not None


def test_crs_without_a_registered_code_gets_wkt2(tmp_path: Path) -> None:
    laea = "+proj=laea +lat_0=52 +lon_0=10.3 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"
    georef = _georef(laea, Affine(10, 0, 1000.0, 0, -10, 2000.0))
    item = pystac.Item.from_file(str(_write(tmp_path, georef)))
    proj = ProjectionExtension.ext(item)
    assert proj.code is None and proj.wkt2
    assert ProjCRS.from_wkt(proj.wkt2).equals(ProjCRS.from_wkt(georef.crs_wkt or ""), ignore_axis_order=True)
    assert item.bbox is not None and 10.2 < item.bbox[0] < item.bbox[2] < 10.5


def test_footprint_across_the_antimeridian_is_split(tmp_path: Path) -> None:
    # UTM 60N (central meridian 177 E): eastings 820-845 km at 10 N straddle 180 degrees.
    georef = _georef("EPSG:32660", Affine(100, 0, 820000.0, 0, -100, 1110000.0), 250, 200)
    item = pystac.Item.from_file(str(_write(tmp_path, georef)))
    assert item.geometry is not None and item.geometry["type"] == "MultiPolygon"
    assert item.bbox is not None
    west, south, east, north = item.bbox
    assert 179.0 < west < 180.0 and -180.0 < east < -179.0  # west > east: crosses the antimeridian
    assert 9.8 < south < north < 10.1
    lons = [x for poly in item.geometry["coordinates"] for x, _ in poly[0]]
    assert min(lons) >= -180.0 and max(lons) <= 180.0


def test_datetime_precedence(tmp_path: Path) -> None:
    given = datetime(2020, 8, 31, 17, 30, tzinfo=timezone(timedelta(hours=2)))
    item = build_stac_item(tmp_path / "a.json", item_id="a", cog_path=tmp_path / "a.tif",
                           gpkg_path=tmp_path / "a.gpkg", georef=UTM, class_list=CLASSES, datetime=given,
                           properties={"datetime": "1999:01:01 00:00:00"})
    assert item.datetime == given and "geogla:datetime_source" not in item.properties
    # The scene's TIFF DateTime tag passed through properties: no zone, so UTC.
    item = build_stac_item(tmp_path / "a.json", item_id="a", cog_path=tmp_path / "a.tif",
                           gpkg_path=tmp_path / "a.gpkg", georef=UTM, class_list=CLASSES,
                           properties={"datetime": "2020:08:31 12:00:00"})
    assert item.datetime == datetime(2020, 8, 31, 12, tzinfo=UTC)
    assert item.properties["geogla:datetime_source"] == "scene"
    assert parse_datetime("2020-08-31T12:00:00Z") == datetime(2020, 8, 31, 12, tzinfo=UTC)
    assert tiff_datetime({"TIFFTAG_DATETIME": "2020:08:31 12:00:00"}) == datetime(2020, 8, 31, 12, tzinfo=UTC)
    assert tiff_datetime({"TIFFTAG_DATETIME": "yesterday"}) is None and tiff_datetime({}) is None
    with pytest.raises(ValueError, match="TIFF DateTime"):
        parse_datetime("31/08/2020")


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    path = _write(tmp_path, UTM)
    before = path.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    cog, gpkg = tmp_path / "scene.classes.tif", tmp_path / "scene.gpkg"
    # Not JSON-serialisable: fails half-way through writing the temporary file.
    with pytest.raises(TypeError):
        write_stac_item(path, build_stac_item(path, item_id="scene", cog_path=cog, gpkg_path=gpkg, georef=UTM,
                                              class_list=CLASSES, properties={"geogla:bad": object()}))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing  # no temporary left
    fresh = tmp_path / "new.json"
    with pytest.raises(ValueError):  # NaN is not JSON
        write_stac_item(
            fresh,
            build_stac_item(
                fresh,
                item_id="scene",
                cog_path=cog,
                gpkg_path=gpkg,
                georef=UTM,
                class_list=CLASSES,
                properties={"geogla:score": float("nan")},
            ),
        )
    assert not fresh.exists() and sorted(os.listdir(tmp_path)) == listing
    with pytest.raises(OutputError):
        missing = tmp_path / "missing" / "x.json"
        write_stac_item(
            missing,
            build_stac_item(
                missing, item_id="scene", cog_path=cog, gpkg_path=gpkg, georef=UTM, class_list=CLASSES
            ),
        )


def test_item_validates_against_the_stac_core_schema_offline(tmp_path: Path) -> None:
    """STAC 1.1 Item schema (and the GeoJSON ones it refers to) as pystac ships them: no network.
    A broken Item fails (the check can fail)."""
    from jsonschema import Draft7Validator
    from pystac.validation.local_validator import get_local_schema_cache
    from referencing import Registry, Resource

    schemas = get_local_schema_cache()
    registry: Registry[Any] = Registry().with_resources(
        (uri, Resource.from_contents(schema)) for uri, schema in schemas.items())
    item_uri = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
    validator = Draft7Validator(schemas[item_uri], registry=registry)
    item = json.loads(_write(tmp_path, UTM).read_text())
    assert item["stac_version"] == "1.1.0"
    assert [e.message for e in validator.iter_errors(item)] == []
    broken = {**item, "bbox": item["bbox"][:3]}
    assert list(validator.iter_errors(broken))


def test_schema_validation_where_possible(tmp_path: Path) -> None:
    """With network: the extension schemas (projection, classification, raster) too."""
    pytest.importorskip("jsonschema", reason="pystac's validation needs jsonschema (not installed)")
    item = pystac.Item.from_file(str(_write(tmp_path, UTM)))
    try:
        item.validate()
    except (
        urllib.error.URLError,
        OSError,
        GetSchemaError,
    ) as exc:  # the schemas are fetched over the network
        pytest.skip(f"STAC schemas unreachable: {exc}")

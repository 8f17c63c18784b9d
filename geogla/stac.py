"""A STAC Item describing a run's outputs: the class COG, the GeoPackage and the probabilities.

:func:`build_stac_item` builds and :func:`write_stac_item` writes one STAC 1.1 Item (JSON, with
pystac) next to the outputs, so that a catalogue, a STAC browser or ``pystac.Item.from_file`` finds the files,
their footprint, grid and class legend without opening them.

Extensions used (the versions are pystac's own): *projection* (the grid of the rasters, on the
Item), *classification* (the class legend of the class COG) and *raster* (its band: uint8,
nodata 255).  Asset hrefs are relative to the Item's folder and the Item carries no ``self``
link, so the outputs and the Item can be moved or uploaded together; or, for an Item to be
ingested into a STAC API (which keeps the JSON, not the folder), absolute, with a ``self`` link
(``absolute_hrefs``, ``geogla run --stac-hrefs absolute``).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import UTC
from datetime import datetime as Datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.utils import datetime_to_str
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, mapping

from geogla.classes import NODATA_CLASS, ClassList
from geogla.cog import atomic_output
from geogla.georef import GeoRef
from geogla.paths import is_url

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GPKG_MEDIA_TYPE = "application/geopackage+sqlite3"
QML_MEDIA_TYPE = "text/xml"  # a QGIS style (.qml) is XML; no media type of its own is registered
#: Points per footprint edge when it is moved to EPSG:4326 (straight edges in a projected CRS
#: are curves in longitude/latitude).
FOOTPRINT_POINTS_PER_EDGE = 21
#: Degrees (about 1 cm) by which the densified footprint may deviate from the exact outline.
FOOTPRINT_TOLERANCE = 1e-7
#: The TIFF ``DateTime`` tag's format (TIFF 6.0: "YYYY:MM:DD HH:MM:SS", no time zone).
TIFF_DATETIME_FORMAT = "%Y:%m:%d %H:%M:%S"

_NAME_PATTERN = re.compile(r"[^0-9A-Za-z_-]+")


def _geogla_version() -> str:
    try:
        return metadata.version("geogla")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def parse_datetime(value: str | Datetime) -> Datetime:
    """Parse an ISO 8601 string or a TIFF ``DateTime`` tag into an aware datetime.

    A value without a time zone (as the TIFF tag always is) is taken as UTC.  Raises ValueError
    for a string in neither format.
    """
    if isinstance(value, Datetime):
        parsed = value
    else:
        text = value.strip()
        try:
            parsed = Datetime.strptime(text, TIFF_DATETIME_FORMAT)
        except ValueError:
            try:
                parsed = Datetime.fromisoformat(text)  # 3.11+ accepts a trailing Z
            except ValueError:
                raise ValueError(f"{value!r} is neither an ISO 8601 date-time nor a TIFF DateTime "
                                 f"('YYYY:MM:DD HH:MM:SS')") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def tiff_datetime(tags: Mapping[str, str]) -> Datetime | None:
    """The acquisition time from a raster's tags (rasterio ``dataset.tags()``), if it has one.

    Reads GDAL's ``TIFFTAG_DATETIME``; returns None when it is absent or malformed (cameras and
    tools write all sorts of things there).
    """
    value = tags.get("TIFFTAG_DATETIME")
    if not value:
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None


def _corners(georef: GeoRef) -> np.ndarray:
    t = georef.affine
    w, h = georef.width, georef.height
    return np.array([t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)], dtype=np.float64)


def native_bbox(georef: GeoRef) -> list[float]:
    """``[minx, miny, maxx, maxy]`` of the raster's four corners in its own CRS."""
    corners = _corners(georef)
    return [float(v) for v in (*corners.min(axis=0), *corners.max(axis=0))]


def _footprint_ring(georef: GeoRef, points_per_edge: int) -> np.ndarray:
    """The raster's outline in its own CRS, ``points_per_edge`` points per edge, closed."""
    corners = _corners(georef)
    edges = []
    steps = np.linspace(0.0, 1.0, points_per_edge)[:-1, None]
    for k in range(4):
        a, b = corners[k], corners[(k + 1) % 4]
        edges.append(a + steps * (b - a))
    ring = np.concatenate(edges)
    return np.concatenate([ring, ring[:1]])


def _split_antimeridian(lon: np.ndarray, lat: np.ndarray) -> tuple[Polygon | MultiPolygon, list[float]]:
    """A ring in lon/lat that crosses ±180° as two polygons, one either side, and its STAC bbox.

    The ring is unwrapped (consecutive longitudes never jump by more than 180°) and cut along
    the meridian; the bbox then has ``west > east``, as the STAC spec asks for such an Item.
    """
    steps = np.diff(lon)
    unwrapped = lon + np.concatenate([[0.0], np.cumsum(np.where(steps > 180.0, -360.0,
                                                                np.where(steps < -180.0, 360.0, 0.0)))])
    shift = 0.0 if unwrapped.max() > 180.0 else 360.0  # else the ring went west over -180
    ring = Polygon(np.column_stack([unwrapped + shift, lat]))
    east_half = shapely.intersection(ring, shapely.box(-180.0, -90.0, 180.0, 90.0))
    west_half = affinity.translate(shapely.intersection(ring, shapely.box(180.0, -90.0, 540.0, 90.0)), -360.0)
    parts = [p for g in (east_half, west_half) for p in getattr(g, "geoms", [g])
             if isinstance(p, Polygon) and not p.is_empty]
    geom = shapely.orient_polygons(
        shapely.simplify(MultiPolygon(parts), FOOTPRINT_TOLERANCE), exterior_cw=False
    )
    west = float(shapely.bounds(east_half)[0])
    east = float(shapely.bounds(west_half)[2])
    return geom, [west, float(lat.min()), east, float(lat.max())]


def footprint_wgs84(georef: GeoRef, points_per_edge: int = FOOTPRINT_POINTS_PER_EDGE
                    ) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The raster's footprint in EPSG:4326 as ``(GeoJSON geometry, bbox)``.

    The footprint is the whole raster extent (nodata collars included), each edge densified to
    ``points_per_edge`` points before it is transformed, so that the curved edges of a projected
    scene are followed.  A footprint crossing the antimeridian becomes a MultiPolygon split there
    with a bbox whose west is greater than its east (STAC / GeoJSON rule).  Without a CRS (pixel
    coordinates) there is no footprint on Earth: returns ``(None, None)``.
    """
    if georef.crs_wkt is None:
        return None, None
    ring = _footprint_ring(georef, points_per_edge)
    transformer = Transformer.from_crs(ProjCRS.from_wkt(georef.crs_wkt), ProjCRS.from_epsg(4326),
                                       always_xy=True)
    lon, lat = transformer.transform(ring[:, 0], ring[:, 1])
    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError("the scene's footprint cannot be transformed to EPSG:4326 "
                         "(does it lie outside its CRS's area of use?)")
    # A geographic CRS with longitudes in [0, 360) passes them through unchanged.
    lon = np.where(np.abs(lon) > 180.0, (lon + 180.0) % 360.0 - 180.0, lon)
    if np.abs(np.diff(lon)).max() > 180.0:
        geom, bbox = _split_antimeridian(lon, lat)
        return mapping(geom), bbox
    polygon = Polygon(np.column_stack([lon, lat]))
    # Densification points on edges that stay straight in lon/lat (small scenes) only bloat the
    # JSON: drop those within FOOTPRINT_TOLERANCE of the outline.
    polygon = shapely.orient_polygons(shapely.simplify(polygon, FOOTPRINT_TOLERANCE), exterior_cw=False)
    return mapping(polygon), [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]


def _crs_code(crs: ProjCRS) -> str | None:
    """``AUTHORITY:CODE`` of ``crs`` (EPSG first), or None when no registered CRS is equivalent.

    pyproj's confidence 90 means "the same CRS under another name"; lower ones differ in some
    parameter, and such a code would misdescribe the data.
    """
    for authority in ("EPSG", None):
        found = crs.to_authority(auth_name=authority, min_confidence=90)
        if found is not None:
            return f"{found[0]}:{found[1]}"
    return None


def _hex(colour: tuple[int, int, int]) -> str:
    return "{:02X}{:02X}{:02X}".format(*colour)


def _classification_name(name: str) -> str:
    """A class name as the classification extension's ``name`` pattern allows: [0-9A-Za-z_-]+."""
    return _NAME_PATTERN.sub("_", name.strip()) or "class"


def class_legend(class_list: ClassList) -> list[Classification]:
    """The classification extension's classes of a class raster: one per class, then nodata.

    ``name`` is the class name with characters outside ``[0-9A-Za-z_-]`` replaced by ``_`` (the
    extension's rule), ``title`` the name as given, ``color_hint`` the class colour (``RRGGBB``);
    value 255 is ``nodata``.
    """
    legend = [Classification.create(value=i, name=_classification_name(name), title=name,
                                     color_hint=_hex(colour))
              for i, (name, colour) in enumerate(zip(class_list.names, class_list.colours, strict=True))]
    legend.append(Classification.create(value=NODATA_CLASS, name="nodata", title="no data",
                                        description="no data in the scene, or not covered", nodata=True))
    return legend


def _relative_href(target: str | os.PathLike[str], folder: Path) -> str:
    """``target`` relative to ``folder`` in POSIX form (``./x.tif``, ``../y/x.tif``)."""
    absolute = Path(target).resolve()
    try:
        rel = os.path.relpath(absolute, folder)
    except ValueError:  # another drive on Windows: no relative path exists
        return absolute.as_uri()
    rel = Path(rel).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def _absolute_href(target: str | os.PathLike[str]) -> str:
    """``target`` as an absolute POSIX path."""
    return Path(target).resolve().as_posix()


def build_stac_item(
    path: str | os.PathLike[str],
    *,
    item_id: str,
    cog_path: str | os.PathLike[str],
    gpkg_path: str | os.PathLike[str],
    georef: GeoRef,
    class_list: ClassList,
    datetime: Datetime | None = None,
    properties: Mapping[str, Any] | None = None,
    probabilities_path: str | os.PathLike[str] | None = None,
    legend_path: str | os.PathLike[str] | None = None,
    absolute_hrefs: bool = False,
    derived_from: Sequence[str] = (),
) -> pystac.Item:
    """The STAC Item describing a run's outputs, for :func:`write_stac_item` to write at ``path``.

    * ``geometry`` / ``bbox``: the scene's whole raster extent in EPSG:4326, each edge densified
      (:func:`footprint_wgs84`; split at the antimeridian; a scene containing a pole is not
      handled).  A scene without a CRS (pixel coordinates) has no place on Earth: ``geometry``
      is null and there is no ``bbox``, which the STAC spec allows.
    * ``datetime`` (STAC requires one), first found of: the ``datetime`` argument; a
      ``"datetime"`` entry of ``properties`` (ISO 8601, or the scene's TIFF ``DateTime`` tag as
      is, see :func:`tiff_datetime`; then ``geogla:datetime_source`` defaults to ``"scene"``);
      else the current UTC time with ``"geogla:datetime_source": "processing"``.  Times without a
      zone are taken as UTC.
    * projection extension on the Item (all its rasters share the grid): ``proj:code``
      (``EPSG:xxxx``, or another authority's code; with no registered code, null plus
      ``proj:wkt2``; null and no ``proj:bbox`` without a CRS), ``proj:shape`` ``[height,
      width]``, ``proj:transform`` (the georef's six coefficients, rasterio order) and
      ``proj:bbox`` (the corners in the scene's CRS).
    * assets, hrefs relative to ``path``'s folder (``absolute_hrefs``: absolute paths, and the Item
      gets a ``self`` link to ``path``; where ``path`` is a URL, the assets are in its folder and
      absolute hrefs are their URLs): ``classes`` (the class COG, with
      ``classification:classes`` (value, name, title, color_hint ``RRGGBB``; 255 marked
      ``nodata``) and ``raster:bands`` (uint8, nodata 255)), ``polygons`` (the GeoPackage) and,
      when ``probabilities_path`` is given, ``probabilities`` (a COG, with ``raster:bands``: one
      per class, uint8, scale 1/255, named after the class); all with roles ``["data"]``; and, when
      ``legend_path`` is given, ``legend`` (the class raster's QGIS style, ``text/xml``, roles
      ``["metadata"]``).
    * ``derived_from`` links to the STAC Items the scene came from (absolute paths or URLs).
    * properties: ``geogla:classes`` (the class names), ``geogla:version`` (the installed
      package's, unless ``properties`` gives one), ``created`` (now, UTC) and ``properties``
      as given (they override all but ``geogla:classes``).

    Raises ValueError for a datetime that cannot be parsed or a footprint that cannot be transformed.
    """
    remote = is_url(str(path))  # outputs in object storage: one folder (prefix), URLs as they are
    folder = Path(path).resolve().parent if not remote else Path()

    def href(target: str | os.PathLike[str]) -> str:
        if remote:
            return str(target) if absolute_hrefs else "./" + posixpath.basename(str(target))
        return _absolute_href(target) if absolute_hrefs else _relative_href(target, folder)

    props: dict[str, Any] = {"geogla:version": _geogla_version()}
    props.update(properties or {})
    given = props.pop("datetime", None)
    now = Datetime.now(UTC)
    if datetime is not None:
        when = parse_datetime(datetime)
    elif given is not None:
        when = parse_datetime(given)
        props.setdefault("geogla:datetime_source", "scene")
    else:
        when = now
        props["geogla:datetime_source"] = "processing"
    props["geogla:classes"] = list(class_list.names)
    props.setdefault("created", datetime_to_str(now))

    geometry, bbox = footprint_wgs84(georef)
    item = pystac.Item(id=item_id, geometry=geometry, bbox=bbox, datetime=when, properties=props)

    # The grid of the rasters (class COG and probabilities share it).
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    code: str | None = None
    wkt2: str | None = None
    if georef.crs_wkt is not None:
        crs = ProjCRS.from_wkt(georef.crs_wkt)
        code = _crs_code(crs)
        if code is None:
            wkt2 = crs.to_wkt("WKT2_2019")
    proj.apply(code=code, wkt2=wkt2, shape=[georef.height, georef.width],
               transform=[float(v) for v in georef.transform],
               bbox=native_bbox(georef) if georef.crs_wkt is not None else None)

    classes_asset = pystac.Asset(
        href=href(cog_path), media_type=COG_MEDIA_TYPE, roles=["data"],
        title="Class raster", description="uint8 class ids (see classification:classes); 255 = no data",
    )
    item.add_asset("classes", classes_asset)
    ClassificationExtension.ext(classes_asset, add_if_missing=True).apply(classes=class_legend(class_list))
    RasterExtension.ext(classes_asset, add_if_missing=True).apply(
        bands=[RasterBand.create(nodata=NODATA_CLASS, data_type=DataType.UINT8)])

    item.add_asset("polygons", pystac.Asset(
        href=href(gpkg_path), media_type=GPKG_MEDIA_TYPE, roles=["data"],
        title="Class polygons",
        description="one polygon layer per class: class_id, class_name, area (m2 where the CRS allows)",
    ))
    if probabilities_path is not None:
        probabilities_asset = pystac.Asset(
            href=href(probabilities_path), media_type=COG_MEDIA_TYPE, roles=["data"],
            title="Class probabilities",
            description="one band per class, in class order: probability x 255 (scale 1/255), masked "
                        "where the class raster is no data",
        )
        item.add_asset("probabilities", probabilities_asset)
        RasterExtension.ext(probabilities_asset, add_if_missing=True).apply(
            bands=[_probability_band(name) for name in class_list.names])
    if legend_path is not None:
        item.add_asset("legend", pystac.Asset(
            href=href(legend_path), media_type=QML_MEDIA_TYPE, roles=["metadata"],
            title="QGIS style of the class raster",
            description="paletted renderer naming each class in its colour; QGIS loads it with the class "
                        "raster",
        ))
    for source in derived_from:
        item.add_link(pystac.Link("derived_from", source, media_type="application/geo+json"))
    if absolute_hrefs:
        item.set_self_href(str(path) if remote else _absolute_href(path))
    return item


def _probability_band(class_name: str) -> RasterBand:
    """The ``raster:bands`` entry of one class's probability band: uint8, read as 0..1 through its
    scale; named after the class (``name`` and ``description``, as STAC 1.1's bands name them)."""
    band = RasterBand.create(data_type=DataType.UINT8, scale=1 / 255, offset=0.0, unit="1")
    band.properties.update({"name": class_name, "description": f"probability of {class_name!r}"})
    return band


def write_stac_item(path: str | os.PathLike[str], item: pystac.Item) -> None:
    """Write ``item`` (from :func:`build_stac_item`, built for the same ``path``) as JSON at
    ``path``, atomically (:func:`geogla.cog.atomic_output`): on any error (a property that is
    not JSON-serialisable, say) ``path`` is left as it was and no temporary remains."""
    document = item.to_dict(include_self_link=item.get_self_href() is not None, transform_hrefs=False)
    with atomic_output(path) as scratch, open(scratch.result, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2, allow_nan=False)
        fh.write("\n")

"""Polygons from the class raster, their areas, and the GeoPackage that opens styled in QGIS.

Polygonizing streams over ``chunk`` x ``chunk`` windows of the class raster.  Each window is
polygonized on its own (4-connectivity, nodata 255 masked out) in *pixel* coordinates, where every
vertex is an integer and so exact in floating point; a polygon that touches none of the window's
internal edges is final at once.  A polygon that touches an internal edge (a seam) is held back
and merged with the polygons of its class that share a stretch of that seam, so that a field
crossing seams comes out as one polygon: the regions are those of a whole-raster polygonization.
Windows are visited row of windows by row of windows: after each row, merged groups that cannot
grow any more (they do not reach the seam below) are finished.  Peak memory is therefore one
window of pixels, its polygons, and the seam polygons of one row of windows plus the groups still
open along the next seam; it does not grow with the scene (a single polygon that does span the
scene is of course held whole).  Finished polygons are moved to the scene's CRS with its affine
transform, so the same pixel corner always gets the same coordinates.

Areas are square metres wherever the CRS allows it (see :func:`area_model`), square pixels
otherwise; the GeoPackage names the unit in each layer's description.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import sqlite3
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import cast
from xml.sax.saxutils import escape

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import LambertAzimuthalEqualAreaConversion
from rasterio.features import shapes
from shapely import STRtree
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from geogla.classes import NODATA_CLASS, ClassList
from geogla.cog import ArrayLike, atomic_output
from geogla.georef import GeoRef

POLYGON_CHUNK = 1024  #: default window side for polygonizing
GPKG_BATCH = 20_000  #: polygons buffered over all layers before the largest layer's are appended
STYLE_TABLE = "layer_styles"

Polygons = Mapping[int, Iterable[BaseGeometry]] | Iterable[tuple[int, BaseGeometry]]


# --------------------------------------------------------------------------------------------
# Areas


@dataclass(frozen=True)
class AreaModel:
    """How areas are measured for one georef.

    ``units`` is ``"m2"`` or ``"px2"``; ``description`` says how, in words, for the layer
    metadata; ``pixel_size`` is the side of the scene's centre pixel in the matching linear unit
    (metres or pixels), used to turn a tolerance in metres into pixels.
    """

    units: str
    description: str
    pixel_size: float
    _measure: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def areas(self, geoms: Iterable[BaseGeometry] | np.ndarray) -> np.ndarray:
        """Return the areas of geometries given in the georef's CRS, as float64."""
        arr = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
        if arr.size == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._measure(arr), dtype=np.float64)


def _pixel_polygon(georef: GeoRef, col: int, row: int) -> Polygon:
    """The pixel ``(col, row)`` as a polygon in the georef's CRS."""
    t = georef.affine
    return Polygon([t @ (col, row), t @ (col + 1, row), t @ (col + 1, row + 1), t @ (col, row + 1)])


@lru_cache(maxsize=16)
def area_model(georef: GeoRef) -> AreaModel:
    """Choose how to measure areas for ``georef``.

    * No CRS: square pixels (planar area divided by the pixel area of the transform).
    * Projected CRS with a linear unit: planar area in the CRS times the square of the unit's
      size in metres (``pyproj`` ``axis_info[0].unit_conversion_factor``), i.e. map area in m^2.
    * Geographic CRS (EPSG:4326, ...): area in a Lambert azimuthal equal-area projection centred on
      the scene, on the CRS's own datum; geometries stay in the input CRS.
    * Anything else (an engineering CRS, a projected CRS without axes): square pixels.
    """
    det = abs(georef.affine.determinant)

    def square_pixels(g: np.ndarray) -> np.ndarray:
        return cast(np.ndarray, shapely.area(g) / det)

    if georef.crs_wkt is None:
        return AreaModel("px2", "square pixels (the scene has no CRS)", 1.0, square_pixels)
    crs = ProjCRS.from_wkt(georef.crs_wkt)
    if crs.is_geographic:
        lon, lat = georef.affine @ (georef.width / 2, georef.height / 2)
        laea = ProjectedCRS(
            conversion=LambertAzimuthalEqualAreaConversion(latitude_natural_origin=lat,
                                                           longitude_natural_origin=lon),
            geodetic_crs=crs.geodetic_crs,
        )
        transformer = Transformer.from_crs(crs, laea, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            x, y = transformer.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        def measure(g: np.ndarray) -> np.ndarray:
            return cast(np.ndarray, shapely.area(shapely.transform(g, project)))

        centre = _pixel_polygon(georef, georef.width // 2, georef.height // 2)
        size = math.sqrt(float(measure(np.array([centre], dtype=object))[0]))
        return AreaModel("m2", "square metres (equal-area projection centred on the scene)",
                         size, measure)
    if crs.is_projected and crs.axis_info and crs.axis_info[0].unit_conversion_factor:
        factor = float(crs.axis_info[0].unit_conversion_factor)
        unit = crs.axis_info[0].unit_name
        return AreaModel("m2", f"square metres (planar, CRS unit {unit})",
                         math.sqrt(det) * factor, lambda g: shapely.area(g) * factor**2)
    return AreaModel("px2", "square pixels (the CRS is neither projected nor geographic)", 1.0,
                     square_pixels)


# --------------------------------------------------------------------------------------------
# Polygonizing


def _chunk_polygons(block: np.ndarray, row0: int, col0: int) -> tuple[np.ndarray, np.ndarray]:
    """Polygonize one window in scene pixel coordinates; return ``(polygons, class ids)``."""
    mask = block != NODATA_CLASS
    if not mask.any():
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    rings: list[list[tuple[float, float]]] = []
    ring_owner: list[int] = []
    values: list[int] = []
    found = shapes(block, mask=mask, connectivity=4, transform=Affine.translation(col0, row0))
    for k, (geom, value) in enumerate(found):
        for ring in geom["coordinates"]:
            rings.append(ring)
            ring_owner.append(k)
        values.append(int(value))
    # Build all polygons in one vectorised call: converting GeoJSON dicts one by one dominates
    # the run time on noisy class maps.
    lengths = np.fromiter((len(r) for r in rings), dtype=np.intp, count=len(rings))
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(rings)),
                       dtype=np.float64, count=2 * int(lengths.sum()))
    linear = shapely.linearrings(flat.reshape(-1, 2), indices=np.repeat(np.arange(len(rings)), lengths))
    polys = shapely.polygons(linear, indices=np.asarray(ring_owner))
    return polys, np.asarray(values, dtype=np.int64)


def _only_valid_polygons(geoms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repair invalid geometries (GDAL's output normally is valid) and split multi-parts."""
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad], method="structure")
    kinds = shapely.get_type_id(geoms)
    if (kinds != shapely.GeometryType.POLYGON).any():
        parts, index = shapely.get_parts(geoms, return_index=True)
        keep = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
        geoms, values = parts[keep], values[index[keep]]
    nonempty = ~shapely.is_empty(geoms)
    return geoms[nonempty], values[nonempty]


def _simplify_chunk(geoms: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Simplify one window's polygons together so that neighbours stay edge-matched.

    ``segmentize`` puts a vertex on every pixel corner, which makes the window's polygons a valid
    coverage (shared edges have the same vertices); ``coverage_simplify`` with
    ``simplify_boundary=False`` keeps the window's outer edges (seams, nodata edges) fixed, so
    the seam merge still sees straight, pixel-exact seam edges.  ``simplify(.., 0)`` then drops
    the collinear vertices left on those fixed edges.
    """
    dense = shapely.segmentize(geoms, 1.0)
    simplified = shapely.coverage_simplify(dense, tolerance_px, simplify_boundary=False)
    return cast(np.ndarray, shapely.simplify(simplified, 0.0))


@dataclass
class _OpenGroup:
    """Seam polygons of one class known to be connected, some touching the seam below."""

    class_id: int
    parts: list[Polygon]
    edge: list[Polygon]  # the parts that touch the seam below the current row of windows


def _shares_edge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each pair of polygons shares a boundary stretch of positive length (not a point)."""
    return cast(np.ndarray, shapely.length(shapely.intersection(a, b)) > 0)


def _merge_row(
    open_groups: list[_OpenGroup], geoms: np.ndarray, values: np.ndarray, row1: int, height: int,
) -> tuple[list[tuple[int, list[Polygon]]], list[_OpenGroup]]:
    """Group this row's seam polygons with each other and with the groups open from above.

    Two polygons of one class belong together when they share a stretch of a seam (4-connected
    pixels across it); polygons of one window never share an edge, so the rule needs no window
    bookkeeping.  Returns the finished groups as ``(class id, parts)`` and the groups still open
    along the seam at ``row1``.
    """
    n_open = len(open_groups)
    node_geoms: list[Polygon] = []
    node_owner: list[int] = []
    node_class: list[int] = []
    for k, group in enumerate(open_groups):
        node_geoms.extend(group.edge)
        node_owner.extend([k] * len(group.edge))
        node_class.extend([group.class_id] * len(group.edge))
    node_geoms.extend(geoms.tolist())
    node_owner.extend(range(n_open, n_open + len(geoms)))
    node_class.extend(values.tolist())

    parent = list(range(n_open + len(geoms)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if node_geoms:
        nodes = np.asarray(node_geoms, dtype=object)
        owner, cls = np.asarray(node_owner), np.asarray(node_class)
        i, j = STRtree(nodes).query(nodes, predicate="intersects")
        keep = (i < j) & (cls[i] == cls[j]) & (owner[i] != owner[j])
        i, j = i[keep], j[keep]
        if len(i):
            linked = _shares_edge(nodes[i], nodes[j])
            for a, b in zip(owner[i[linked]].tolist(), owner[j[linked]].tolist(), strict=True):
                parent[find(a)] = find(b)

    members: dict[int, list[int]] = {}
    for owner_id in range(n_open + len(geoms)):
        members.setdefault(find(owner_id), []).append(owner_id)
    at_seam_below = (shapely.bounds(geoms)[:, 3] == row1) if (len(geoms) and row1 < height) \
        else np.zeros(len(geoms), dtype=bool)

    finished: list[tuple[int, list[Polygon]]] = []
    still_open: list[_OpenGroup] = []
    for ids in members.values():
        parts: list[Polygon] = []
        edge: list[Polygon] = []
        class_id = -1
        for owner_id in ids:
            if owner_id < n_open:
                parts.extend(open_groups[owner_id].parts)
                class_id = open_groups[owner_id].class_id
            else:
                new = owner_id - n_open
                parts.append(geoms[new])
                class_id = int(values[new])
                if at_seam_below[new]:
                    edge.append(geoms[new])
        if edge:
            still_open.append(_OpenGroup(class_id, parts, edge))
        else:
            finished.append((class_id, parts))
    return finished, still_open


def _dissolve(parts: list[Polygon]) -> list[Polygon]:
    """Union the parts of one group into its polygon(s), dropping collinear seam vertices."""
    if len(parts) == 1:
        return parts
    merged = shapely.simplify(shapely.union_all(parts), 0.0)
    if isinstance(merged, Polygon):
        return [merged]
    if isinstance(merged, MultiPolygon):  # not expected: the parts are edge-connected
        return list(merged.geoms)
    return [g for g in shapely.get_parts(merged) if isinstance(g, Polygon)]


def iter_polygons(
    classes: ArrayLike,
    georef: GeoRef,
    class_list: ClassList,
    *,
    chunk: int = POLYGON_CHUNK,
    min_area: float | None = None,
    simplify: float | None = None,
) -> Iterator[tuple[int, Polygon]]:
    """Yield ``(class id, polygon)`` for every 4-connected region of one class, streaming.

    ``classes`` is a uint8 array-like of shape ``georef.shape`` (numpy, zarr) read one
    ``chunk`` x ``chunk`` window at a time; nodata (255) never becomes a polygon.  Polygons are
    valid, in ``georef``'s CRS with counter-clockwise shells, and a region crossing window seams
    comes out as one polygon (see the module docstring for the merge and its memory bound).
    Without ``simplify`` they rasterize back (``rasterio.features.rasterize``, pixel centres) to
    exactly the input.  Order: polygons that touch no seam as their window is done, merged ones
    after each row of windows.

    ``min_area`` drops polygons whose area (:func:`area_model`: m^2, or square pixels without a
    CRS) is below it.  ``simplify`` is a tolerance in metres (pixels without a CRS) for
    ``shapely.coverage_simplify``, applied per window with the window's outer edges fixed so that
    neighbouring polygons stay edge-matched and seams still merge; with it the output no longer
    reproduces the raster exactly.  Raises ValueError for a shape mismatch, a non-positive
    ``chunk`` or a class id (other than 255) outside ``class_list``.
    """
    height, width = georef.height, georef.width
    if tuple(classes.shape) != (height, width):
        raise ValueError(f"the class array has shape {tuple(classes.shape)} but the georef "
                         f"expects {(height, width)}")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    model = area_model(georef)
    tolerance_px = (simplify / model.pixel_size) if simplify else 0.0
    t = georef.affine
    a, b, c, d, e, f = t.a, t.b, t.c, t.d, t.e, t.f

    def to_world(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

    def finish(geoms_px: np.ndarray, ids: np.ndarray) -> Iterator[tuple[int, Polygon]]:
        if len(geoms_px) == 0:
            return
        world = shapely.orient_polygons(shapely.transform(geoms_px, to_world), exterior_cw=False)
        if min_area:
            keep = model.areas(world) >= min_area
            world, ids = world[keep], ids[keep]
        for geom, class_id in zip(world.tolist(), ids.tolist(), strict=True):
            yield int(class_id), geom

    open_groups: list[_OpenGroup] = []
    for row0 in range(0, height, chunk):
        row1 = min(row0 + chunk, height)
        seam_geoms: list[np.ndarray] = []
        seam_values: list[np.ndarray] = []
        for col0 in range(0, width, chunk):
            col1 = min(col0 + chunk, width)
            block = np.ascontiguousarray(np.asarray(classes[row0:row1, col0:col1]), dtype=np.uint8)
            if block.shape != (row1 - row0, col1 - col0):
                raise ValueError(f"reading [{row0}:{row1}, {col0}:{col1}] gave shape {block.shape}")
            top = int(block.max(where=block != NODATA_CLASS, initial=0))
            if top >= len(class_list):
                raise ValueError(f"class id {top} found but the class list has "
                                 f"{len(class_list)} classes")
            geoms, values = _chunk_polygons(block, row0, col0)
            if len(geoms) == 0:
                continue
            if tolerance_px > 0:
                geoms = _simplify_chunk(geoms, tolerance_px)
            geoms, values = _only_valid_polygons(geoms, values)
            bounds = shapely.bounds(geoms)
            # Exact comparisons are safe: pixel coordinates are small integers.
            on_seam = (((bounds[:, 0] == col0) & (col0 > 0)) | ((bounds[:, 2] == col1) & (col1 < width))
                       | ((bounds[:, 1] == row0) & (row0 > 0)) | ((bounds[:, 3] == row1) & (row1 < height)))
            yield from finish(geoms[~on_seam], values[~on_seam])
            seam_geoms.append(geoms[on_seam])
            seam_values.append(values[on_seam])
        row_geoms = np.concatenate(seam_geoms) if seam_geoms else np.empty(0, dtype=object)
        row_values = np.concatenate(seam_values) if seam_values else np.empty(0, dtype=np.int64)
        finished, open_groups = _merge_row(open_groups, row_geoms, row_values, row1, height)
        merged: list[Polygon] = []
        merged_ids: list[int] = []
        for class_id, parts in finished:
            polys = _dissolve(parts)
            merged.extend(polys)
            merged_ids.extend([class_id] * len(polys))
        yield from finish(np.asarray(merged, dtype=object), np.asarray(merged_ids, dtype=np.int64))
    assert not open_groups, "groups left open after the last row"


def polygonize(
    classes: ArrayLike,
    georef: GeoRef,
    class_list: ClassList,
    *,
    chunk: int = POLYGON_CHUNK,
    min_area: float | None = None,
    simplify: float | None = None,
) -> dict[int, list[Polygon]]:
    """Collect :func:`iter_polygons` into ``{class id: [polygons]}``, classes present only.

    Keys are sorted; the polygons of a class are in :func:`iter_polygons` order.  The result
    holds every polygon of the scene: to keep memory bounded on huge scenes pass
    :func:`iter_polygons` straight to :func:`write_geopackage` instead.
    """
    out: dict[int, list[Polygon]] = {}
    for class_id, geom in iter_polygons(classes, georef, class_list, chunk=chunk,
                                        min_area=min_area, simplify=simplify):
        out.setdefault(class_id, []).append(geom)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# GeoPackage and QGIS styles

_RESERVED_PREFIXES = ("gpkg_", "rtree_", "sqlite_")
#: Creation options of every GeoPackage written: version 1.2, which every GDAL since 2.2 reads
#: without a warning (GDAL 3.6, in the QGIS of Debian 12, warns on each open of a 1.4 file, the
#: default of current GDAL); nothing written needs a later version.
GPKG_CREATION = {"VERSION": "1.2"}
# Characters a layer name keeps besides Unicode letters and digits: GDAL refuses a name that
# starts with punctuation ("(tree)", "'x", "-x", ...), and quotes, semicolons or brackets inside
# one trip older readers and hand-written SQL; a run of anything else becomes one "_".
_LAYER_PUNCTUATION = " _-."


def layer_names(class_list: ClassList) -> dict[int, str]:
    """Return the GeoPackage layer name of each class: its name, made safe and unique.

    Every character but letters, digits, spaces, ``_``, ``-`` and ``.`` becomes ``_`` (a run of
    them one ``_``), and leading and trailing ones other than letters and digits go; a name that
    is then empty or starts with a digit, or begins ``gpkg_``, ``rtree_`` or ``sqlite_`` (forbidden
    or used by GeoPackage and SQLite) or is ``layer_styles``, gets a ``class_`` prefix.  Names are
    compared case-insensitively, as SQLite compares table names: a name already taken gets
    ``_2``, ``_3``, ..., so that every class keeps a layer of its own.  The class's own name
    stays in its features' ``class_name`` and in the layer's description.
    """
    names: dict[int, str] = {}
    taken: set[str] = set()
    for i, name in enumerate(class_list.names):
        base = _safe_layer_name(name)
        candidate, k = base, 1
        while candidate.casefold() in taken:
            k += 1
            candidate = f"{base}_{k}"
        taken.add(candidate.casefold())
        names[i] = candidate
    return names


def _safe_layer_name(name: str) -> str:
    """``name`` with only letters, digits and :data:`_LAYER_PUNCTUATION`, starting with a letter or
    ``_``, and not reserved (see :func:`layer_names`)."""
    kept = "".join(c if c.isalnum() or c in _LAYER_PUNCTUATION else "\0" for c in name)
    safe = re.sub("\0+", "_", kept)
    safe = re.sub(r"^[\W_]+|[\W_]+$", "", safe)  # no leading or trailing punctuation
    low = safe.casefold()
    if not safe or safe[0].isdigit() or low.startswith(_RESERVED_PREFIXES) or low == STYLE_TABLE:
        safe = f"class_{safe}" if safe else "class"
    return safe


def _rgba(colour: tuple[int, int, int], alpha: int) -> str:
    return f"{colour[0]},{colour[1]},{colour[2]},{alpha}"


def layer_qml(colour: tuple[int, int, int]) -> str:
    """Return a minimal QGIS QML style: single-symbol simple fill in ``colour``.

    The fill is the class colour, opaque; the outline is a thin (0.26 mm), half-transparent dark
    grey.  Symbol-layer properties are written both as an ``<Option type="Map">`` (QGIS >= 3.26
    reads it) and as ``<prop>`` elements (what older QGIS reads).  ``styleCategories`` is
    ``Symbology`` so that loading it touches nothing else of the layer.
    """
    props = {
        "color": _rgba(colour, 255),
        "style": "solid",
        "outline_color": "35,35,35,128",
        "outline_style": "solid",
        "outline_width": "0.26",
        "outline_width_unit": "MM",
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_unit": "MM",
    }
    root = ET.Element("qgis", version="3.28.0-Firenze", styleCategories="Symbology")
    renderer = ET.SubElement(root, "renderer-v2", type="singleSymbol", symbollevels="0",
                             enableorderby="0", forceraster="0", referencescale="-1")
    symbols = ET.SubElement(renderer, "symbols")
    symbol = ET.SubElement(symbols, "symbol", type="fill", name="0", alpha="1",
                           clip_to_extent="1", force_rhr="0")
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0",
                                            "pass": "0"})
    option_map = ET.SubElement(layer, "Option", type="Map")
    for key, value in props.items():
        ET.SubElement(option_map, "Option", type="QString", name=key, value=value)
    for key, value in props.items():
        ET.SubElement(layer, "prop", k=key, v=value)
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygon
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


_SLD_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:se="http://www.opengis.net/se" \
version="1.1.0">
  <NamedLayer>
    <se:Name>{name}</se:Name>
    <UserStyle>
      <se:Name>{name}</se:Name>
      <se:FeatureTypeStyle>
        <se:Rule>
          <se:Name>Single symbol</se:Name>
          <se:PolygonSymbolizer>
            <se:Fill>
              <se:SvgParameter name="fill">{fill}</se:SvgParameter>
            </se:Fill>
            <se:Stroke>
              <se:SvgParameter name="stroke">#232323</se:SvgParameter>
              <se:SvgParameter name="stroke-opacity">0.5</se:SvgParameter>
              <se:SvgParameter name="stroke-width">1</se:SvgParameter>
            </se:Stroke>
          </se:PolygonSymbolizer>
        </se:Rule>
      </se:FeatureTypeStyle>
    </UserStyle>
  </NamedLayer>
</StyledLayerDescriptor>
"""


def layer_sld(layer_name: str, colour: tuple[int, int, int]) -> str:
    """Return a minimal SLD 1.1 style: one rule, a polygon symbolizer filled with ``colour``."""
    fill = "#{:02x}{:02x}{:02x}".format(*colour)
    return _SLD_TEMPLATE.format(name=escape(layer_name), fill=fill)


# QGIS creates this table through OGR with these fields (qgsogrprovider saveStyle); this is the
# DDL GDAL's GeoPackage driver makes of them.
_STYLE_DDL = f"""CREATE TABLE "{STYLE_TABLE}" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  "f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256),
  "f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT,
  "useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30),
  "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def _add_layer_styles(gpkg: str | os.PathLike[str], styles: list[tuple[str, str, str]]) -> None:
    """Create ``layer_styles`` with one default style per ``(layer, qml, sld)`` and register it.

    The table follows the QGIS GeoPackage convention (QGIS loads the row whose ``f_table_name``
    and ``f_geometry_column`` match the layer, ``f_table_schema`` empty, ``useAsDefault`` first);
    it is registered in ``gpkg_contents`` as an ``attributes`` table, as the GeoPackage spec
    requires for a non-spatial user table (and as GDAL does: srs_id 0, empty description).
    """
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with sqlite3.connect(gpkg) as conn:
        columns = dict(conn.execute("SELECT table_name, column_name FROM gpkg_geometry_columns")) \
            if _has_table(conn, "gpkg_geometry_columns") else {}
        conn.execute(_STYLE_DDL)
        conn.executemany(
            f'INSERT INTO "{STYLE_TABLE}" (f_table_catalog, f_table_schema, f_table_name, '
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner, "
            "update_time) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', ?)",
            [(layer, columns.get(layer, "geom"), layer, qml, sld,
              f"geogla class colour for {layer}", now) for layer, qml, sld in styles],
        )
        conn.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
            "last_change, srs_id) VALUES (?, 'attributes', ?, '', ?, "
            "(SELECT srs_id FROM gpkg_spatial_ref_sys WHERE srs_id = 0))",
            (STYLE_TABLE, STYLE_TABLE, now),
        )
    conn.close()


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _create_empty_geopackage(path: str | os.PathLike[str]) -> None:
    """Create a GeoPackage with GDAL's metadata tables and no user table.

    pyogrio cannot create a data source without a layer, so a placeholder attributes table is
    written and dropped again, with its ``gpkg_contents`` / ``gpkg_ogr_contents`` rows.
    """
    placeholder = "geogla_placeholder"
    pyogrio.write_dataframe(pd.DataFrame({"x": pd.Series([], dtype="int32")}), path,
                            layer=placeholder, driver="GPKG", dataset_options=GPKG_CREATION)
    with sqlite3.connect(path) as conn:
        conn.execute(f'DROP TABLE "{placeholder}"')
        conn.execute("DELETE FROM gpkg_contents WHERE table_name = ?", (placeholder,))
        if _has_table(conn, "gpkg_ogr_contents"):
            conn.execute("DELETE FROM gpkg_ogr_contents WHERE table_name = ?", (placeholder,))
    conn.close()


def _as_pairs(polygons: Polygons) -> Iterator[tuple[int, BaseGeometry]]:
    if isinstance(polygons, Mapping):
        for class_id, geoms in polygons.items():
            for geom in geoms:
                yield class_id, geom
    else:
        yield from polygons


def write_geopackage(
    path: str | os.PathLike[str],
    polygons: Polygons,
    georef: GeoRef,
    class_list: ClassList,
    *,
    batch: int = GPKG_BATCH,
) -> None:
    """Write the polygons as a GeoPackage that opens styled in QGIS, atomically.

    ``polygons`` is :func:`polygonize`'s ``{class id: [polygons]}`` or any iterable of
    ``(class id, polygon)`` such as :func:`iter_polygons` (then memory stays bounded: at most
    ``batch`` polygons are buffered, over all classes; when they are, the class with the most is
    appended to its layer).  MultiPolygons are split into their polygons.

    One polygon layer per class present, named by :func:`layer_names`, in ``georef``'s CRS (none
    when it has none), with attributes ``class_id`` (int32), ``class_name`` (str) and ``area``
    (float64; unit in the layer description, see :func:`area_model`), written with pyogrio.  A
    ``layer_styles`` table then gives each layer a default style in its class colour
    (:func:`layer_qml`, :func:`layer_sld`).  When no class is present at all (an all-nodata
    scene) the GeoPackage holds no feature layer and an empty ``layer_styles`` table.  Raises
    ValueError for a class id outside ``class_list`` and TypeError for a geometry that is not
    polygonal; on any error nothing is left at ``path`` (see :func:`geogla.cog.atomic_output`).
    """
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    names = layer_names(class_list)
    model = area_model(georef)
    crs = georef.crs_wkt
    buffers: dict[int, list[BaseGeometry]] = {}
    held = 0  # polygons in all buffers
    written: list[int] = []

    with atomic_output(path) as scratch:
        target = scratch.result

        def flush(class_id: int) -> None:
            nonlocal held
            geoms = np.asarray(buffers.pop(class_id), dtype=object)
            held -= len(geoms)
            frame = gpd.GeoDataFrame(
                {"class_id": np.full(len(geoms), class_id, dtype=np.int32),
                 "class_name": [class_list.names[class_id]] * len(geoms),
                 "area": model.areas(geoms)},
                geometry=geoms, crs=crs,
            )
            first = class_id not in written
            description = (f"geogla class {class_list.names[class_id]!r} (id {class_id}); "
                           f"area in {model.description}")
            with warnings.catch_warnings():
                # No CRS is legitimate here (pixel coordinates); pyogrio would warn every batch.
                warnings.filterwarnings("ignore", message="'crs' was not provided")
                pyogrio.write_dataframe(
                    frame, target, layer=names[class_id], driver="GPKG", geometry_type="Polygon",
                    append=not first, layer_options={"DESCRIPTION": description} if first else None,
                    dataset_options=None if written else GPKG_CREATION,
                )
            if first:
                written.append(class_id)

        for raw_id, geom in _as_pairs(polygons):
            class_id = int(raw_id)
            if not 0 <= class_id < len(class_list):
                raise ValueError(f"class id {class_id} is not in the class list of "
                                 f"{len(class_list)} classes")
            if isinstance(geom, MultiPolygon):
                parts: list[BaseGeometry] = list(geom.geoms)
            elif isinstance(geom, Polygon):
                parts = [geom]
            else:
                raise TypeError(f"class {class_id}: expected polygons, got a {geom.geom_type}")
            buffers.setdefault(class_id, []).extend(parts)
            held += len(parts)
            if held >= batch:
                # The bound is on the total: a per-class one let the final flush of every class at
                # once hold (classes x batch) polygons, the peak of a large run.
                flush(max(buffers, key=lambda k: len(buffers[k])))
        for class_id in sorted(buffers):
            flush(class_id)

        if not written:
            _create_empty_geopackage(target)
        _add_layer_styles(target, [
            (names[i], layer_qml(class_list.colours[i]), layer_sld(names[i], class_list.colours[i]))
            for i in sorted(written)
        ])


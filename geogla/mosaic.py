"""Virtual scenes: several files mosaicked into one scene, or a scene cut to an area of interest.

Both are GDAL VRTs (an XML description, no pixel copied) that a :class:`geogla.scene.Scene` carries
as text: every worker reads its windows through the VRT straight from the files (local, HTTP or
object storage), and GDAL opens a file only where a read touches it.

A mosaic's grid has the finest resolution of its files; coarser files are resampled into it
(bilinear for the pixels, nearest for the mask).  Its mask is the union of the files' masks, so
that what no file covers, and each file's own nodata, stay nodata (a file's mask as a plain scene
of it has it).  Files must share a CRS, a band count and a data type; they must be north-up (no
rotation) and carry their own geotransform (not ground control points only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from geogla.errors import ConfigError, SceneError
from geogla.paths import gdal_name

#: Grid positions closer than this (in pixels) to a whole number are that number: float
#: coordinates of adjacent tiles rarely add up exactly.
SNAP = 1e-6

#: GDAL's names of the colour interpretations rasterio reports.
_GDAL_COLORS = {"gray": "Gray", "palette": "Palette", "red": "Red", "green": "Green", "blue": "Blue",
                "alpha": "Alpha", "undefined": "Undefined"}

#: rasterio's dtype names to VRT's dataType.
_VRT_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
              "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
              "float64": "Float64"}


@dataclass(frozen=True)
class SourceFile:
    """One raster file of a virtual scene, as its header describes it."""

    name: str  #: as the user gave it (a path or a URL)
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    dtypes: tuple[str, ...]
    nodata: float | None
    colorinterp: tuple[str, ...]
    tags: dict[str, str]

    @classmethod
    def from_dataset(cls, name: str, ds: Any) -> SourceFile:
        return cls(name=name, crs=ds.crs, transform=ds.transform, width=int(ds.width),
                   height=int(ds.height), dtypes=tuple(str(d) for d in ds.dtypes), nodata=ds.nodata,
                   colorinterp=tuple(c.name for c in ds.colorinterp), tags=dict(ds.tags()))

    @property
    def count(self) -> int:
        return len(self.dtypes)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of a north-up file."""
        t = self.transform
        return (t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``transform`` (pixel size ``res`` = (x, y), both positive), size, CRS."""

    transform: Affine
    width: int
    height: int
    crs: CRS | None


def check_north_up(source: SourceFile) -> None:
    """Raise :class:`SceneError` unless ``source`` has a north-up geotransform of its own."""
    t = source.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise SceneError(f"The file {source.name} is rotated or flipped (geotransform {tuple(t)[:6]}); "
                         "only north-up files can be mosaicked or cut by --bbox.")


def check_compatible(sources: Sequence[SourceFile]) -> None:
    """Raise :class:`SceneError` with one sentence unless ``sources`` can form one mosaic: one CRS
    (or none for all), one band count, one data type, north-up."""
    first = sources[0]
    for source in sources:
        check_north_up(source)
        if source.crs != first.crs:  # rasterio's CRS equals no None; None equals None
            raise SceneError(
                f"The files {first.name} and {source.name} are in different CRSs ({_crs_name(first.crs)} and "
                f"{_crs_name(source.crs)}); reproject them to one CRS first (gdalwarp -t_srs).")
        if source.count != first.count:
            raise SceneError(f"The files {first.name} and {source.name} have different band counts "
                             f"({first.count} and {source.count}).")
        if source.dtypes != first.dtypes:
            raise SceneError(f"The files {first.name} and {source.name} have different data types "
                             f"({first.dtypes[0]} and {source.dtypes[0]}).")


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def _whole(value: float, up: bool) -> int:
    """``value`` as a whole number of pixels: itself when within :data:`SNAP`, else rounded out."""
    if abs(value - round(value)) < SNAP:
        return round(value)
    return math.ceil(value) if up else math.floor(value)


def mosaic_grid(sources: Sequence[SourceFile]) -> Grid:
    """The grid covering every file of ``sources`` (compatible, see :func:`check_compatible`) at the
    finest resolution among them, anchored at the top-left corner of their union."""
    res_x = min(s.transform.a for s in sources)
    res_y = min(-s.transform.e for s in sources)
    lefts, bottoms, rights, tops = zip(*(s.bounds for s in sources), strict=True)
    left, top = min(lefts), max(tops)
    width = _whole((max(rights) - left) / res_x, up=True)
    height = _whole((top - min(bottoms)) / res_y, up=True)
    return Grid(Affine(res_x, 0.0, left, 0.0, -res_y, top), width, height, sources[0].crs)


def parse_bbox(value: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"MINX,MINY,MAXX,MAXY"`` (or four numbers) as four finite floats with min < max
    (:class:`ConfigError`)."""
    text = value if isinstance(value, str) else ",".join(map(repr, value))
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--bbox takes four numbers MINX,MINY,MAXX,MAXY, got {text!r}.")
    minx, miny, maxx, maxy = values
    if not (minx < maxx and miny < maxy):
        raise ConfigError(f"--bbox must have MINX < MAXX and MINY < MAXY, got {text!r}.")
    return (minx, miny, maxx, maxy)


def bbox_in_crs(bbox: tuple[float, float, float, float], bbox_crs: str | None,
                grid_crs: CRS | None) -> tuple[float, float, float, float]:
    """``bbox`` (in ``bbox_crs``; None: the grid's own coordinates) in the grid's CRS, densified so
    that a longitude/latitude box covers the area it encloses."""
    if bbox_crs is None:
        return bbox
    try:
        crs = CRS.from_user_input(bbox_crs)
    except CRSError:
        raise ConfigError(f"--bbox-crs {bbox_crs!r} is not a CRS (use e.g. EPSG:4326).") from None
    if grid_crs is None:
        raise ConfigError("--bbox-crs needs a georeferenced scene, and this scene has no CRS: give --bbox "
                          "in its pixel coordinates (x = column, y = -row).")
    if crs == grid_crs:
        return bbox
    minx, miny, maxx, maxy = transform_bounds(crs, grid_crs, *bbox, densify_pts=21)
    return (minx, miny, maxx, maxy)


def cut_grid(grid: Grid, bbox: tuple[float, float, float, float], name: str, given: str = "") -> Grid:
    """The part of ``grid`` that ``bbox`` (in the grid's coordinates) covers, in whole pixels
    (every pixel the box touches); :class:`ConfigError` when they do not overlap, naming the box
    as ``given`` (default: ``bbox``) and the scene as ``name``."""
    minx, miny, maxx, maxy = bbox
    inv = ~grid.transform
    cols = [c for c, _ in (inv @ (minx, maxy), inv @ (maxx, miny))]
    rows = [r for _, r in (inv @ (minx, maxy), inv @ (maxx, miny))]
    c0, c1 = max(_whole(min(cols), up=False), 0), min(_whole(max(cols), up=True), grid.width)
    r0, r1 = max(_whole(min(rows), up=False), 0), min(_whole(max(rows), up=True), grid.height)
    if c1 <= c0 or r1 <= r0:
        shown = given or ",".join(f"{v:g}" for v in bbox)
        raise ConfigError(f"--bbox {shown} does not overlap the scene {name}.")
    return Grid(grid.transform @ Affine.translation(c0, r0), c1 - c0, r1 - r0, grid.crs)


def _rect(tag: str, x: float, y: float, w: float, h: float) -> str:
    return f'<{tag} xOff="{x:.10g}" yOff="{y:.10g}" xSize="{w:.10g}" ySize="{h:.10g}"/>'


def _placement(source: SourceFile, grid: Grid) -> str:
    """The source's whole extent placed on ``grid`` (fractional where it does not align)."""
    inv = ~grid.transform
    x0, y0 = inv @ (source.transform.c, source.transform.f)
    x1, y1 = inv @ source.transform @ (source.width, source.height)
    return (_rect("SrcRect", 0, 0, source.width, source.height)
            + _rect("DstRect", x0, y0, x1 - x0, y1 - y0))


def build_vrt(sources: Sequence[SourceFile], grid: Grid) -> str:
    """The VRT (XML) of ``sources`` (compatible) on ``grid``: every band of the files, later files
    over earlier ones where they overlap (each drawn through its own mask), and a dataset mask
    that is the union of the files' masks (nothing covers the rest).  Sources whose resolution
    differs from the grid's are resampled bilinearly."""
    first = sources[0]
    composite = overlapping(sources)
    srs = "" if grid.crs is None else f"<SRS>{escape(grid.crs.to_wkt())}</SRS>"
    t = grid.transform
    parts = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">', srs,
             f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"]
    if len(sources) == 1 and first.tags:
        items = "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in first.tags.items())
        parts.append(f"<Metadata>{items}</Metadata>")
    for band in range(1, first.count + 1):
        parts.append(f'<VRTRasterBand dataType="{_VRT_TYPES[first.dtypes[band - 1]]}" band="{band}">')
        if first.nodata is not None:
            parts.append(f"<NoDataValue>{first.nodata!r}</NoDataValue>")
        color = _GDAL_COLORS.get(first.colorinterp[band - 1], "Undefined")
        parts.append(f"<ColorInterp>{color}</ColorInterp>")
        parts += [_source(s, grid, str(band), masked=True, composite=composite) for s in sources]
        parts.append("</VRTRasterBand>")
    parts.append('<MaskBand><VRTRasterBand dataType="Byte">')
    parts += [_source(s, grid, f"mask,{band}", masked=False, composite=True)
              for s in sources for band in _mask_bands(s)]
    parts.append("</VRTRasterBand></MaskBand></VRTDataset>")
    return "".join(parts)


def _mask_bands(source: SourceFile) -> list[int]:
    """The bands whose masks, united, give the file's own dataset mask as a plain scene has it
    (rasterio's ``dataset_mask``): with a nodata value, a pixel is valid where any band but
    alpha holds data, so every such band's mask counts; a mask band or an alpha band is one mask
    for the whole file (band 1's); without either, everything is valid (band 1's, all 255)."""
    if source.nodata is None or "alpha" in source.colorinterp:
        return [1]
    return [b for b, interp in enumerate(source.colorinterp, start=1) if interp != "alpha"]


def overlapping(sources: Sequence[SourceFile]) -> bool:
    """Whether any two of ``sources`` (north-up, one CRS) overlap by more than a sliver."""
    boxes = sorted(s.bounds for s in sources)
    for i, (left, bottom, right, top) in enumerate(boxes):
        eps = SNAP * (right - left)
        for other_left, other_bottom, _, other_top in boxes[i + 1:]:
            if other_left >= right - eps:
                break  # sorted by left edge: no later box reaches back into this one
            if other_bottom < top - eps and other_top > bottom + eps:
                return True
    return False


def _source(source: SourceFile, grid: Grid, band: str, masked: bool, composite: bool) -> str:
    """One file's band (``"mask,1"``: its mask) on ``grid``.  ``composite``: drawn only where its
    mask (``masked``) or its value (the mask band: 0 never erases) is valid, so that overlapping
    files do not erase one another; otherwise a plain copy, which GDAL reads for all bands at once
    (one request per tile of a pixel-interleaved COG, where a composited band reads each tile again)."""
    resampled = not (math.isclose(source.transform.a, grid.transform.a, rel_tol=SNAP)
                     and math.isclose(source.transform.e, grid.transform.e, rel_tol=SNAP))
    kind = "bilinear" if resampled and masked else "nearest"
    tag, keep = "SimpleSource", ""
    if composite:
        tag, keep = "ComplexSource", "<UseMaskBand>true</UseMaskBand>" if masked else "<NODATA>0</NODATA>"
    return (f'<{tag} resampling="{kind}">'
            f'<SourceFilename relativeToVRT="0">{escape(gdal_name(source.name))}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>{_placement(source, grid)}{keep}</{tag}>")

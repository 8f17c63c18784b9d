"""Cloud-Optimized GeoTIFF writers: the class raster and per-class probability rasters.

Both writers stream: the array-like is read one ``block`` x ``block`` window at a time (never
whole), written to a tiled temporary GeoTIFF next to the output, and that file is converted by
GDAL's COG driver, which builds the overviews and lays the file out for HTTP range reads.  Peak
memory is one block plus GDAL's block cache, whatever the scene size.

Writes are atomic: every temporary file lives in the output's folder under one hidden, unique
prefix; the finished COG is moved onto ``path`` with :func:`os.replace` and on any exception all
temporaries are removed, so ``path`` is either the complete new file or untouched.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geogla.classes import NODATA_CLASS, ClassList
from geogla.errors import OutputError
from geogla.georef import GeoRef

COG_BLOCK = 512  #: tile size of the COGs geogla writes
COMPRESS = "DEFLATE"  #: readable by every GDAL/QGIS build, unlike ZSTD
CLASS_BAND_DESCRIPTION = "class id"


class ArrayLike(Protocol):
    """What the writers need of an array: a shape, a dtype and numpy-style slicing (numpy, zarr)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


class ScratchFiles:
    """Temporary files beside an output ``path``, all named with one hidden, unique prefix.

    ``result`` is the temporary that :func:`atomic_output` moves onto ``path``; :meth:`name` makes
    further temporaries.  Third-party temporaries derived from these names (GDAL's ``.ovr.tmp``)
    share the prefix, so :meth:`cleanup` finds them too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prefix = f".{path.name}.{uuid.uuid4().hex[:12]}"
        self.result = self.name(".part" + path.suffix)

    def name(self, suffix: str) -> Path:
        """Return a temporary path ``<folder>/<prefix><suffix>``."""
        return self.path.parent / f"{self.prefix}{suffix}"

    def cleanup(self) -> None:
        """Remove every file in the output folder that starts with this prefix."""
        _remove_matching(self.path.parent, lambda name: name.startswith(self.prefix))

    @staticmethod
    def remove_stale(path: Path) -> None:
        """Remove the temporaries of earlier writes of ``path`` (any prefix of :class:`ScratchFiles`
        for it, and those of writes of those temporaries, which add a leading dot): a process killed
        while writing ``path`` could not remove its own."""
        pattern = re.compile(r"\.+" + re.escape(f"{path.name}.") + r"[0-9a-f]{12}(\.|$)")
        _remove_matching(path.parent, lambda name: pattern.match(name) is not None)


def _remove_matching(folder: Path, matches: Callable[[str], bool]) -> None:
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if matches(e.name)]
    for name in names:
        with suppress(FileNotFoundError):  # another cleanup was first
            os.remove(folder / name)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[ScratchFiles]:
    """Write an output atomically: yield :class:`ScratchFiles` whose ``result`` becomes ``path``.

    The caller writes ``scratch.result`` (and any ``scratch.name(...)`` temporaries).  On a normal
    exit ``result`` replaces ``path`` in one :func:`os.replace` (same folder, so same file system)
    and the other temporaries are removed; on any exception, KeyboardInterrupt included, all
    temporaries are removed and ``path`` is left as it was.  Temporaries that an earlier, killed
    write of ``path`` left are removed first.  Raises :class:`OutputError` when the output folder
    does not exist.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise OutputError(f"The output folder {str(target.parent)!r} does not exist.")
    ScratchFiles.remove_stale(target)  # one writer per output: the run store's lock
    scratch = ScratchFiles(target)
    try:
        yield scratch
        if not scratch.result.exists():
            raise RuntimeError(f"nothing was written to the temporary file for {str(target)!r}")
        os.replace(scratch.result, target)
    finally:
        scratch.cleanup()


def _block_windows(height: int, width: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(row0, row1, col0, col1)`` of the ``block`` grid, row-major."""
    for r0 in range(0, height, block):
        for c0 in range(0, width, block):
            yield r0, min(r0 + block, height), c0, min(c0 + block, width)


def _write_cog(
    path: str | os.PathLike[str],
    read: Callable[[int, int, int, int], np.ndarray],
    georef: GeoRef,
    *,
    count: int,
    dtype: np.dtype[Any],
    nodata: float | None,
    block: int,
    overview_resampling: str,
    tags: Mapping[str, str],
    band_descriptions: Sequence[str],
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
    valid: Callable[[int, int, int, int], np.ndarray] | None = None,
    scale: float | None = None,
) -> None:
    """Stream ``read(r0, r1, c0, c1) -> (count, h, w)`` into a COG at ``path``, atomically.

    The one place where geogla writes COGs: a tiled temporary GeoTIFF gets the pixels block by
    block plus the colour map, tags and band descriptions; GDAL's COG driver then copies it
    (metadata included) with ``overview_resampling`` for the overviews.  Without a colour map the
    bands are grey, never RGB or alpha, whatever their number.  ``valid(r0, r1, c0, c1) -> (h, w)``
    bool, when given, is written as the internal mask (what ``dataset_mask()`` and GIS clients
    read); ``scale`` is every band's scale (offset 0), so that readers show ``value * scale``.
    """
    if block <= 0 or block % 16:
        raise ValueError(f"block must be a positive multiple of 16, got {block}")
    if len(band_descriptions) != count:
        raise ValueError(f"{len(band_descriptions)} band descriptions for {count} bands")
    height, width = georef.height, georef.width
    # Predictors help DEFLATE on continuous values; class ids are categorical, so none there.
    predictor = "YES" if colormap is None else "NO"
    # GDAL calls 3 or 4 uint8 bands RGB(A) unless told otherwise: a fourth class became alpha.
    photometric = {} if colormap is not None else {"photometric": "MINISBLACK", "alpha": "NO"}
    with atomic_output(path) as scratch, warnings.catch_warnings():
        # A scene without CRS is legal (pixel coordinates); rasterio would warn on every open.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        source = scratch.name(".src.tif")
        with rasterio.open(
            source, "w", driver="GTiff", width=width, height=height, count=count,
            dtype=dtype.name, crs=georef.crs, transform=georef.affine, nodata=nodata,
            tiled=True, blockxsize=block, blockysize=block, bigtiff="IF_SAFER",
            # Written once and read once: fast compression just to keep the temporary small.
            compress=COMPRESS, zlevel=1, **photometric,
        ) as dst:
            for r0, r1, c0, c1 in _block_windows(height, width, block):
                data = read(r0, r1, c0, c1)
                if data.shape != (count, r1 - r0, c1 - c0):
                    raise ValueError(f"block [{r0}:{r1}, {c0}:{c1}] has shape {data.shape}, "
                                     f"expected {(count, r1 - r0, c1 - c0)}")
                window = Window(c0, r0, c1 - c0, r1 - r0)
                dst.write(data, window=window)
                if valid is not None:
                    dst.write_mask(np.where(valid(r0, r1, c0, c1), 255, 0).astype(np.uint8), window=window)
            if colormap is None:
                dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (count - 1)
            if scale is not None:
                dst.scales = [scale] * count
                dst.offsets = [0.0] * count
            if colormap is not None:
                dst.write_colormap(1, dict(colormap))
            dst.update_tags(**tags)
            for band, description in enumerate(band_descriptions, start=1):
                dst.set_band_description(band, description)
        # The COG driver copies colour table, tags, band descriptions and nodata (checked in
        # tests/test_cog.py); OVERVIEWS=AUTO halves until the overview fits in one block.
        rasterio.shutil.copy(
            source, scratch.result, driver="COG",
            BLOCKSIZE=block, COMPRESS=COMPRESS, PREDICTOR=predictor,
            OVERVIEW_RESAMPLING=overview_resampling, OVERVIEWS="AUTO",
            BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
        )


def _check_shape(shape: tuple[int, ...], expected: tuple[int, ...], what: str) -> None:
    if tuple(shape) != expected:
        raise ValueError(f"{what} has shape {tuple(shape)} but the georef expects {expected}")


def class_colormap(class_list: ClassList) -> dict[int, tuple[int, int, int, int]]:
    """Return the colour map of a class raster: class colours, nodata (255) transparent black."""
    cmap = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(class_list.colours)}
    cmap[NODATA_CLASS] = (0, 0, 0, 0)
    return cmap


def class_tags(class_list: ClassList) -> dict[str, str]:
    """Return the dataset tags naming the classes: ``GEOGLA_CLASSES`` (JSON) and ``CLASS_<id>``."""
    tags = {"GEOGLA_CLASSES": json.dumps(list(class_list.names))}
    tags.update({f"CLASS_{i}": name for i, name in enumerate(class_list.names)})
    return tags


def class_raster_qml(class_list: ClassList) -> str:
    """A QGIS style (QML) of the class raster: the paletted renderer of band 1 with one entry per
    class, its colour and its name (nodata 255 left out, so it shows transparent).

    Written beside the COG as ``<stem>.classes.qml``, which QGIS loads as the layer's default
    style: its legend then lists the class names (QGIS 3.22 reads no raster attribute table, and
    the colour table alone lists 256 unnamed entries).
    """
    entries = [
        ET.Element("paletteEntry", {"value": str(i), "color": "#{:02x}{:02x}{:02x}".format(*colour),
                                    "alpha": "255", "label": name})
        for i, (name, colour) in enumerate(zip(class_list.names, class_list.colours, strict=True))
    ]
    qgis = ET.Element("qgis", {"version": "3.22.0", "styleCategories": "Symbology"})
    pipe = ET.SubElement(qgis, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", {"type": "paletted", "band": "1", "opacity": "1",
                                                        "alphaBand": "-1", "nodataColor": ""})
    ET.SubElement(renderer, "rasterTransparency")
    ET.SubElement(renderer, "colorPalette").extend(entries)
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(qgis, "blendMode").text = "0"
    ET.indent(qgis)
    doctype = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
    return f"{doctype}\n{ET.tostring(qgis, encoding='unicode')}\n"


def write_class_cog(
    path: str | os.PathLike[str],
    classes: ArrayLike,
    georef: GeoRef,
    class_list: ClassList,
    *,
    block: int = COG_BLOCK,
) -> None:
    """Write the class raster ``classes`` (uint8, shape ``georef.shape``) as a COG at ``path``.

    The file is uint8, one band described ``"class id"``, nodata 255, in ``georef``'s CRS (none
    when ``crs_wkt`` is None) and transform, DEFLATE-compressed in ``block`` x ``block`` tiles,
    with MODE-resampled overviews (the most frequent class; class ids are never averaged), a
    colour map of the class colours (255 transparent black) and the tags of :func:`class_tags`.
    ``classes`` is read one block at a time (numpy or zarr); values are taken as they are, so
    ids beyond the class list simply get a black colour-map entry.  Atomic, see
    :func:`atomic_output`.
    """
    _check_shape(classes.shape, georef.shape, "the class array")

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return np.asarray(classes[r0:r1, c0:c1]).astype(np.uint8, copy=False)[None]

    _write_cog(path, read, georef, count=1, dtype=np.dtype(np.uint8), nodata=NODATA_CLASS,
               block=block, overview_resampling="MODE", tags=class_tags(class_list),
               band_descriptions=[CLASS_BAND_DESCRIPTION], colormap=class_colormap(class_list))


def write_float_cog(
    path: str | os.PathLike[str],
    array: ArrayLike,
    georef: GeoRef,
    band_names: Sequence[str],
    *,
    nodata: float | None = None,
    block: int = COG_BLOCK,
    overview_resampling: str = "AVERAGE",
    tags: Mapping[str, str] | None = None,
    valid: ArrayLike | None = None,
    scale: float | None = None,
) -> None:
    """Write a ``(bands, H, W)`` float32 or uint8 array (per-class probabilities, say) as a COG.

    Band ``i`` is described ``band_names[i]``; the tag ``GEOGLA_BANDS`` holds the names as JSON
    and ``tags`` are added.  Bands are grey (never RGB or alpha).  ``nodata`` is stored as given
    (e.g. NaN for float32); ``valid``, a ``(H, W)`` boolean array (numpy, zarr or any array read
    by slices), becomes the internal mask, which clients honour as nodata; ``scale`` is each
    band's scale (offset 0: uint8 probabilities x 255 read as 0..1 with ``1 / 255``).  Overviews
    use ``overview_resampling`` (AVERAGE suits probabilities); tiles, compression (with a
    predictor), streaming and atomicity are as in :func:`write_class_cog`.
    """
    dtype = np.dtype(array.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
        raise ValueError(f"write_float_cog writes float32 or uint8, got {dtype}")
    if len(array.shape) != 3:
        raise ValueError(f"expected a (bands, height, width) array, got shape {tuple(array.shape)}")
    count = int(array.shape[0])
    _check_shape(array.shape, (count, *georef.shape), "the band array")

    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return np.asarray(array[:, r0:r1, c0:c1]).astype(dtype, copy=False)

    read_valid = None
    if valid is not None:
        _check_shape(valid.shape, georef.shape, "the valid-pixel array")

        def read_valid(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
            return np.asarray(valid[r0:r1, c0:c1]).astype(bool, copy=False)

    all_tags = {"GEOGLA_BANDS": json.dumps(list(band_names))}
    all_tags.update(tags or {})
    _write_cog(path, read, georef, count=count, dtype=dtype, nodata=nodata, block=block,
               overview_resampling=overview_resampling, tags=all_tags,
               band_descriptions=list(band_names), valid=read_valid, scale=scale)


def cog_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a GeoTIFF the way the tests and ``geogla info`` need it.

    Keys: ``layout`` (``"COG"`` for a file written by GDAL's COG driver, else None),
    ``compression``, ``width``, ``height``, ``count``, ``dtype``, ``block_shapes`` (one
    ``(rows, cols)`` per band), ``overviews`` (decimation factors of band 1), ``nodata``,
    ``crs_wkt`` (None without CRS), ``transform`` (six coefficients), ``tags`` (dataset tags),
    ``descriptions`` (per band) and ``colormap`` (band 1's entries, or None).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            structure = src.tags(ns="IMAGE_STRUCTURE")
            try:
                colormap: dict[int, tuple[int, int, int, int]] | None = src.colormap(1)
            except ValueError:  # rasterio raises ValueError for a band without colour table
                colormap = None
            return {
                "layout": structure.get("LAYOUT"),
                "compression": structure.get("COMPRESSION"),
                "width": src.width,
                "height": src.height,
                "count": src.count,
                "dtype": src.dtypes[0],
                "block_shapes": list(src.block_shapes),
                "overviews": src.overviews(1),
                "nodata": src.nodata,
                "crs_wkt": src.crs.to_wkt() if src.crs else None,
                "transform": tuple(src.transform)[:6],
                "tags": src.tags(),
                "descriptions": list(src.descriptions),
                "colormap": colormap,
            }

"""Opening a scene and reading it window by window with rasterio.

A :class:`Scene` is a small, JSON-serialisable description of an input raster (its path, where it
lies, which bands feed the models and how they are scaled to [0, 1]); reading functions take it and
open the file themselves, so a Dask task can carry a scene to any worker.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geogla.env import gdal_env
from geogla.errors import ConfigError, SceneError, first_line
from geogla.georef import GeoRef
from geogla.mosaic import SourceFile, bbox_in_crs, build_vrt, check_compatible, cut_grid, mosaic_grid
from geogla.paths import absolute, is_url
from geogla.resize import long_side_shape
from geogla.stac_input import ItemAsset, check_asset_option, is_item_path, item_asset

#: Output transform of a file without georeferencing: x = column, y = -row (QGIS's convention for
#: such images, so that the class raster and the polygons show upright and aligned).
PIXEL_TRANSFORM = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)

#: Longest side of the decimated read that the scene-wide percentile stretch is computed from.
STRETCH_SAMPLE_SIDE = 2048


@dataclass(frozen=True)
class Scene:
    """An input raster as geogla reads it.

    ``georef`` is where the outputs lie: the file's own georeferencing, or, for a file without any
    (a drone JPEG), pixel coordinates with x = column and y = -row, the way QGIS shows such images.
    ``band_indexes`` are the three 1-based bands fed to the models as R, G, B (a single band is
    repeated).  ``stretch`` is ``None`` for 8-bit data, which passes through (value / 255), else one
    ``(low, high)`` pair per fed band: the scene-wide percentile stretch that maps ``low`` to 0 and
    ``high`` to 1, identical for every window.  ``work_shape`` is the size of the working image the
    models see (the file's size unless ``--gsd`` or a protocol resizes it); windows are cut from the
    working image, and the outputs are on the file's grid.
    """

    path: str
    georef: GeoRef
    band_count: int
    band_indexes: tuple[int, int, int]
    dtype: str
    stretch: tuple[tuple[float, float], ...] | None
    work_shape: tuple[int, int]
    driver: str = ""  #: GDAL's short name of the file's format, e.g. GTiff, JPEG, PNG
    #: A virtual scene's GDAL VRT (XML): files mosaicked or a file cut to ``--bbox``
    #: (:mod:`geogla.mosaic`); empty: ``path`` itself is read.
    vrt: str = ""
    #: The files a virtual scene reads (as given); empty for a plain one.
    sources: tuple[str, ...] = ()
    #: The outputs' file name stem; empty: ``path``'s.
    name: str = ""
    #: The STAC Item asset the scene was given as (``path`` is then the asset's raster).
    item: ItemAsset | None = None

    @property
    def stem(self) -> str:
        return self.name or Path(self.path).stem

    @property
    def dataset_name(self) -> str:
        """What GDAL opens: the VRT of a virtual scene, else ``path``."""
        return self.vrt or self.path

    def to_unit(self, data: np.ndarray) -> np.ndarray:
        """The fed bands ``data`` ``(3, h, w)`` float32 scaled to [0, 1], in place: 8-bit values
        divided by 255, others through the scene-wide :attr:`stretch` (clipped)."""
        if self.stretch is None:
            data /= 255.0
        else:
            for b, (lo, hi) in enumerate(self.stretch):
                data[b] = np.clip((data[b] - lo) / (hi - lo), 0.0, 1.0)
        return data

    @property
    def pixel_coordinates(self) -> bool:
        """True when the file has no CRS and the outputs are in pixel coordinates."""
        return self.georef.crs_wkt is None

    @property
    def work_scale(self) -> tuple[float, float]:
        """File pixels per working pixel, ``(rows, cols)``; (1, 1) when the scene is not resized."""
        return (self.georef.height / self.work_shape[0], self.georef.width / self.work_shape[1])

    def to_json(self) -> dict[str, Any]:
        d = {"path": self.path, "georef": self.georef.to_json(), "band_count": self.band_count,
             "band_indexes": list(self.band_indexes), "dtype": self.dtype,
             "stretch": [list(s) for s in self.stretch] if self.stretch is not None else None,
             "work_shape": list(self.work_shape), "driver": self.driver}
        # Only where set: a plain scene keeps the description (and the run store's fingerprint)
        # it had before virtual scenes existed.
        optional = {"vrt": self.vrt, "sources": list(self.sources), "name": self.name,
                    "item": self.item.to_json() if self.item is not None else None}
        return {**d, **{k: v for k, v in optional.items() if v}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scene:
        stretch = d.get("stretch")
        return cls(
            path=d["path"],
            georef=GeoRef.from_json(d["georef"]),
            band_count=int(d["band_count"]),
            band_indexes=tuple(int(b) for b in d["band_indexes"]),  # type: ignore[arg-type]
            dtype=d["dtype"],
            stretch=tuple((float(lo), float(hi)) for lo, hi in stretch) if stretch is not None else None,
            work_shape=(int(d["work_shape"][0]), int(d["work_shape"][1])),
            driver=str(d.get("driver", "")),
            vrt=str(d.get("vrt", "")),
            sources=tuple(str(p) for p in d.get("sources", ())),
            name=str(d.get("name", "")),
            item=ItemAsset.from_json(d["item"]) if d.get("item") else None,
        )


def open_raster(path: str, what: str = "scene") -> Any:
    """Open ``path`` with rasterio, turning GDAL's failures into one clear :class:`SceneError`.

    ``what`` names the file in the message ("scene", "label raster").  ``path`` may also be a
    VRT's XML (:attr:`Scene.vrt`).
    """
    if path.startswith("<VRTDataset"):
        return rasterio.open(path)
    if not is_url(path) and not os.path.exists(path):
        raise SceneError(f"The {what} {path} does not exist.")
    if not is_url(path) and os.path.isdir(path):
        raise SceneError(f"The {what} {path} is a folder, not a raster file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return _georeferenced(rasterio.open(path))
    except RasterioIOError as exc:
        if is_url(path):
            _remote_failure(what, path, str(exc))
        if "not recognized as" in str(exc) and "supported" in str(exc):
            raise SceneError(f"The {what} {path} is not a raster that GDAL can read.") from None
        raise SceneError(f"The {what} {path} cannot be opened: {first_line(exc)}.") from None


def _remote_failure(what: str, path: str, message: str) -> None:
    """Raise the :class:`SceneError` of a URL GDAL could not open, when its ``message`` says why
    in a way a user can act on: no credentials, no bucket, no object."""
    if "AWS_SECRET_ACCESS_KEY" in message or "AWS_NO_SIGN_REQUEST" in message:
        raise SceneError(f"The {what} {path} cannot be read: no AWS credentials were found (set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_NO_SIGN_REQUEST=YES for a "
                         "public bucket).")
    if message.startswith("CURL error:"):
        reason = message.removeprefix("CURL error:").strip().splitlines()[0].rstrip(".")
        raise SceneError(f"The {what} {path} cannot be reached: {reason}.")
    if "bucket does not exist" in message:
        raise SceneError(f"The bucket of the {what} {path} does not exist.")
    if "does not exist" in message:
        raise SceneError(f"The {what} {path} was not found: no such object, or no access to it "
                         "(check the URL and the credentials).")


class _WarpedByGCPs:
    """A raster georeferenced by ground control points only, seen through GDAL's GCP transformer:
    a north-up grid in the GCPs' CRS (:func:`_georeferenced`).  Reads like the dataset; closing
    it closes the file too."""

    def __init__(self, source: Any) -> None:
        crs = source.gcps[1]
        self._source = source
        # nearest: the pixels are the file's, moved, never blended (nodata stays nodata); outside
        # the file's footprint the grid is nodata: its nodata value, its alpha, or an added alpha
        alpha = source.nodata is None and ColorInterp.alpha not in source.colorinterp
        self._vrt = WarpedVRT(source, src_crs=crs, crs=crs, resampling=Resampling.nearest, add_alpha=alpha)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vrt, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._vrt.close()
        self._source.close()


def _georeferenced(ds: Any) -> Any:
    """``ds``, or, where it is georeferenced by ground control points alone (no geotransform, no
    CRS of its own), the same raster warped by GDAL's GCP transformer onto a north-up grid in the
    GCPs' CRS: the grid every output is then made on, so that the outputs carry an ordinary
    transform (which COGs, STAC's projection and GeoPackage coordinates need) and overlay the
    input where GIS clients show it, as they warp it with the same transformer."""
    gcps, crs = ds.gcps
    if not gcps or crs is None or ds.crs is not None or not ds.transform.is_identity:
        return ds
    try:
        return _WarpedByGCPs(ds)
    except Exception:
        ds.close()
        raise


def _default_bands(ds: Any) -> tuple[int, int, int]:
    interp = list(ds.colorinterp)
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in interp for c in rgb):
        r, g, b = (interp.index(c) + 1 for c in rgb)
        return (r, g, b)
    data_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha] or [1]
    if len(data_bands) >= 3:
        return (data_bands[0], data_bands[1], data_bands[2])
    return (data_bands[0],) * 3  # panchromatic (or grey + alpha): one band repeated into RGB


def _choose_bands(ds: Any, bands: Sequence[int] | None) -> tuple[int, int, int]:
    if bands is None:
        return _default_bands(ds)
    if len(bands) not in (1, 3):
        raise SceneError(f"--bands takes one band or three bands, got {len(bands)}.")
    for b in bands:
        if not 1 <= b <= ds.count:
            raise SceneError(f"Band {b} does not exist: the scene {ds.name} has {ds.count} band(s).")
    return (bands[0],) * 3 if len(bands) == 1 else (bands[0], bands[1], bands[2])


def _check_readable(ds: Any, indexes: Sequence[int]) -> None:
    """Read the first and last block so that a truncated or corrupt file fails now, not mid-run."""
    h, w = ds.block_shapes[0]
    last = Window(max(ds.width - w, 0) // w * w, max(ds.height - h, 0) // h * h,
                  min(w, ds.width), min(h, ds.height))
    for win in (Window(0, 0, min(w, ds.width), min(h, ds.height)), last):
        ds.read(sorted(set(indexes)), window=win)


def _percentile_stretch(
    ds: Any, indexes: Sequence[int], low: float, high: float
) -> tuple[tuple[float, float], ...]:
    """Scene-wide (low, high) percentiles per band from a decimated read, ignoring nodata."""
    scale = max(ds.width, ds.height) / STRETCH_SAMPLE_SIDE
    shape = (max(1, round(ds.height / max(scale, 1))), max(1, round(ds.width / max(scale, 1))))
    data = ds.read(list(indexes), out_shape=(len(indexes), *shape), masked=True)
    out = []
    for band in data:
        values = band.compressed()
        if values.size == 0:
            out.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(values.astype(np.float64), [low, high])
        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return tuple(out)


def _work_shape(georef: GeoRef, gsd: float | None, resize_long_side: int | None,
                path: str) -> tuple[int, int]:
    """The working image's size for a ground sampling distance or a long-side resize."""
    if gsd is not None and resize_long_side is not None:
        raise ConfigError("Give either --gsd or a long-side resize, not both.")
    if gsd is not None:
        if not math.isfinite(gsd) or gsd <= 0:
            raise ConfigError(f"--gsd must be a positive number of metres, got {gsd}.")
        if georef.crs_wkt is None:
            raise ConfigError(f"--gsd needs a georeferenced scene, and {path} has no CRS.")
        row_m, col_m = georef.pixel_size_metres()
        return (max(1, round(georef.height * row_m / gsd)), max(1, round(georef.width * col_m / gsd)))
    if resize_long_side is not None:
        if resize_long_side <= 0:
            raise ConfigError(
                f"The long-side resize must be a positive number of pixels, got {resize_long_side}."
            )
        return long_side_shape(georef.shape, resize_long_side)
    return georef.shape


#: File name endings of the rasters a folder given as a scene contributes to its mosaic.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".png", ".jpg", ".jpeg", ".img", ".vrt")


def scene_files(inputs: Sequence[str]) -> tuple[list[str], str]:
    """The files ``inputs`` name and the outputs' name stem: one file (or URL) as itself; several
    files as a mosaic named after the first (``<stem>-mosaic``); a folder, or an object-storage
    prefix ending in ``/`` (``s3://bucket/tiles/``), as the mosaic of the rasters in it
    (:data:`RASTER_SUFFIXES`, sorted by name), named after the folder."""
    if not inputs:
        raise SceneError("No scene was given.")
    if len(inputs) == 1 and is_url(inputs[0]) and inputs[0].endswith("/") and "://" in inputs[0]:
        return _prefix_files(inputs[0])
    if len(inputs) == 1 and not is_url(inputs[0]) and os.path.isdir(inputs[0]):
        folder = inputs[0]
        files = _rasters_in(f"The folder {folder}", [os.path.join(folder, f) for f in os.listdir(folder)])
        return files, Path(os.path.abspath(folder)).name
    for path in inputs:
        if not is_url(path) and os.path.isdir(path):
            raise SceneError(f"The scene {path} is a folder; give either one folder or several files.")
    if len(set(inputs)) != len(inputs):
        raise SceneError("A file is given twice in the list of scenes.")
    return list(inputs), Path(inputs[0]).stem + ("-mosaic" if len(inputs) > 1 else "")


def _prefix_files(prefix: str) -> tuple[list[str], str]:
    """The rasters under an object-storage ``prefix`` (listed with fsspec) and the prefix's name."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(prefix)
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        raise SceneError(f"The scene folder {prefix} does not exist.") from None
    except Exception as exc:  # no filesystem for the scheme, credentials, network
        raise SceneError(f"The scene folder {prefix} cannot be listed: {first_line(exc)}.") from None
    scheme = prefix.split("://", 1)[0]
    files = _rasters_in(f"The scene folder {prefix}", [f"{scheme}://{name}" for name in names])
    return files, prefix.rstrip("/").rsplit("/", 1)[-1]


def _rasters_in(folder: str, paths: Sequence[str]) -> list[str]:
    """The rasters among a folder's ``paths`` (:data:`RASTER_SUFFIXES`, hidden files left out),
    sorted by name; :class:`SceneError` naming the ``folder`` ("The folder x") when there is none."""
    files = sorted(p for p in paths
                   if p.lower().endswith(RASTER_SUFFIXES) and not p.rsplit("/", 1)[-1].startswith("."))
    if not files:
        raise SceneError(f"{folder} holds no raster files ({', '.join(RASTER_SUFFIXES)}).")
    return files


def _source_file(path: str, in_mosaic: bool) -> SourceFile:
    """The header of one file of a virtual scene (:class:`SceneError` if it cannot be opened, is
    georeferenced by ground control points only, or, ``in_mosaic``, not georeferenced at all: it
    would have no place among the others)."""
    with open_raster(path) as ds:
        if isinstance(ds, _WarpedByGCPs):
            raise SceneError(f"The file {path} is georeferenced by ground control points only; warp it to a "
                             "grid first (gdalwarp) to mosaic it or cut it with --bbox.")
        source = SourceFile.from_dataset(path, ds)
    if source.crs is None and source.transform.is_identity:
        if in_mosaic:
            raise SceneError(f"The file {path} is not georeferenced, so it has no place in a mosaic; "
                             "run it alone.")
        source = replace(source, transform=Affine(*PIXEL_TRANSFORM))
    return source


def virtual_scene(files: Sequence[str], bbox: tuple[float, float, float, float] | None = None,
                  bbox_crs: str | None = None) -> str:
    """The VRT (XML) of ``files`` mosaicked (:mod:`geogla.mosaic`), cut to ``bbox`` when given (in
    ``bbox_crs``, None: the files' CRS, or their pixel coordinates x = column, y = -row)."""
    sources = [_source_file(path, in_mosaic=len(files) > 1) for path in files]
    check_compatible(sources)
    grid = mosaic_grid(sources)
    if bbox is not None:
        name = files[0] if len(files) == 1 else "mosaic"
        given = ",".join(f"{v:g}" for v in bbox) + (f" ({bbox_crs})" if bbox_crs else "")
        grid = cut_grid(grid, bbox_in_crs(bbox, bbox_crs, grid.crs), name, given)
    return build_vrt(sources, grid)


#: A scene as given: one file, URL or folder, or several files (one mosaic).
SceneInput = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def open_scene(path: SceneInput,
               bands: Sequence[int] | None = None,
               stretch_percentiles: tuple[float, float] = (2.0, 98.0), gsd: float | None = None,
               resize_long_side: int | None = None, bbox: tuple[float, float, float, float] | None = None,
               bbox_crs: str | None = None, asset: str | None = None) -> Scene:
    """Open and check a scene; raise :class:`SceneError` with one sentence if it cannot be used.

    ``path`` is a file or URL, a folder or a list of files (one mosaic, :func:`scene_files`), or a
    STAC Item (``.json``) whose ``asset`` is read (:func:`geogla.stac_input.item_asset`; the
    outputs are named after the Item's id).
    ``bbox`` (MINX, MINY, MAXX, MAXY in ``bbox_crs``, default the scene's CRS) cuts the scene to the
    pixels the box touches.  ``bands`` picks and orders the bands fed to the models (1-based; one
    band is repeated into three).  By default the bands declared red, green and blue are used, else
    the first three, else the first band repeated.  Non-8-bit data get one scene-wide percentile
    stretch.  ``gsd`` (metres) or ``resize_long_side`` (pixels) set the working resolution (see
    :class:`Scene`).
    """
    inputs = [str(path)] if isinstance(path, str | os.PathLike) else [str(p) for p in path]
    check_asset_option(asset, inputs)
    item = item_asset(inputs[0], asset) if len(inputs) == 1 and is_item_path(inputs[0]) else None
    if item is not None:
        inputs = [item.href]
    files, name = scene_files(inputs)
    name = item.stem if item is not None else name
    shown = inputs[0] if len(inputs) == 1 else files[0]  # the file, URL or folder named first
    if bbox_crs is not None and bbox is None:
        raise ConfigError("--bbox-crs names the CRS of --bbox, which is missing.")
    with gdal_env():
        virtual = len(files) > 1 or bbox is not None
        vrt = virtual_scene(files, bbox, bbox_crs) if virtual else ""
        path = shown if virtual else files[0]  # a folder of one file is that file
        ds = open_raster(vrt or path)
        try:
            indexes = _choose_bands(ds, bands)
            try:
                _check_readable(ds, indexes)
                dtype = ds.dtypes[indexes[0] - 1]
                stretch = None if dtype == "uint8" else _percentile_stretch(ds, indexes, *stretch_percentiles)
            except RasterioError as exc:
                raise SceneError(
                    f"The scene {shown} cannot be read (truncated or corrupt?): {first_line(exc)}."
                ) from None
            georef = GeoRef.from_dataset(ds)
            if georef.crs_wkt is None and georef.is_identity:
                georef = replace(georef, transform=PIXEL_TRANSFORM)
            return Scene(path=absolute(path), georef=georef,
                         band_count=int(ds.count), band_indexes=indexes, dtype=str(dtype), stretch=stretch,
                         work_shape=_work_shape(georef, gsd, resize_long_side, shown), driver=str(ds.driver),
                         vrt=vrt, sources=tuple(absolute(f) for f in files) if virtual else (),
                         name="" if name == Path(path).stem else name, item=item)
        finally:
            ds.close()


class SceneReader:
    """Reads windows of one scene; open it once per task, use it for a batch of windows.

    Use as a context manager: ``with SceneReader(scene) as r: rgb, valid = r.read(box)``.
    """

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self._env = gdal_env()
        self._ds: Any = None

    def __enter__(self) -> Self:
        self._env.__enter__()
        try:
            self._ds = open_raster(self.scene.dataset_name)
        except BaseException:
            self._env.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._ds is not None:
                self._ds.close()
        finally:
            self._env.__exit__(None, None, None)

    def read(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Read WORKING-image pixels ``[y1:y2, x1:x2]`` as ``(rgb, valid)``.

        ``rgb`` is float32 ``(3, h, w)`` in [0, 1]; ``valid`` is bool ``(h, w)``, False on nodata
        and on padding beyond the image edge, where ``rgb`` is 0.  Nodata is rasterio's dataset
        mask: the file's mask band or alpha band where it has one, else the pixels where every band
        equals its nodata value.  A resized working image (``--gsd``, a protocol's resize) is read
        through GDAL's resampling of the matching file window (bilinear for the pixels, nearest
        for the mask), window by window.
        """
        y1, x1, y2, x2 = box
        sc = self.scene
        h, w = y2 - y1, x2 - x1
        rgb = np.zeros((3, h, w), dtype=np.float32)
        valid = np.zeros((h, w), dtype=bool)
        ry1, rx1 = max(y1, 0), max(x1, 0)
        ry2, rx2 = min(y2, sc.work_shape[0]), min(x2, sc.work_shape[1])
        if ry2 <= ry1 or rx2 <= rx1:
            return rgb, valid
        fy, fx = sc.work_scale
        idx = list(sc.band_indexes)
        try:
            if (fy, fx) == (1.0, 1.0):
                win = Window(rx1, ry1, rx2 - rx1, ry2 - ry1)
                data = self._ds.read(idx, window=win).astype(np.float32)
                ok = self._ds.dataset_mask(window=win) > 0
            else:
                win = Window(rx1 * fx, ry1 * fy, (rx2 - rx1) * fx, (ry2 - ry1) * fy)
                shape = (ry2 - ry1, rx2 - rx1)
                data = self._ds.read(idx, window=win, out_shape=(3, *shape),
                                     resampling=Resampling.bilinear).astype(np.float32)
                ok = self._ds.dataset_mask(window=win, out_shape=shape, resampling=Resampling.nearest) > 0
        except RasterioError as exc:
            raise SceneError(f"The scene {sc.path} cannot be read at rows {ry1}-{ry2}, columns {rx1}-{rx2} "
                             f"(truncated or corrupt?): {first_line(exc)}.") from None
        data = sc.to_unit(data)
        data[:, ~ok] = 0.0
        sl = (slice(ry1 - y1, ry2 - y1), slice(rx1 - x1, rx2 - x1))
        rgb[:, sl[0], sl[1]] = data
        valid[sl] = ok
        return rgb, valid

    def read_valid(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The validity mask of FILE pixels ``[y1:y2, x1:x2]`` (see :meth:`read`), without the pixels."""
        y1, x1, y2, x2 = box
        sc = self.scene
        valid = np.zeros((y2 - y1, x2 - x1), dtype=bool)
        ry1, rx1 = max(y1, 0), max(x1, 0)
        ry2, rx2 = min(y2, sc.georef.height), min(x2, sc.georef.width)
        if ry2 > ry1 and rx2 > rx1:
            try:
                mask = self._ds.dataset_mask(window=Window(rx1, ry1, rx2 - rx1, ry2 - ry1))
            except RasterioError as exc:
                raise SceneError(f"The scene {sc.path} cannot be read (truncated or corrupt?): "
                                 f"{first_line(exc)}.") from None
            valid[ry1 - y1:ry2 - y1, rx1 - x1:rx2 - x1] = mask > 0
        return valid


def check_label_raster(path: str, scene: Scene) -> None:
    """Raise :class:`SceneError` unless ``path`` is a raster the size of ``scene`` (its file grid)."""
    with gdal_env():
        ds = open_raster(path, what="label raster")
        with ds:
            if (ds.height, ds.width) != scene.georef.shape:
                raise SceneError(f"The label raster {path} is {ds.width} x {ds.height} pixels but the scene "
                                 f"is {scene.georef.width} x {scene.georef.height}.")

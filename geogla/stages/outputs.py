"""The outputs stage (class COG, styled GeoPackage, STAC item, published as one set) and the
evaluation against a label raster (``geogla run --labels``)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from geogla.classes import NODATA_CLASS
from geogla.cog import atomic_output, class_raster_qml, write_class_cog, write_float_cog
from geogla.env import gdal_env
from geogla.metrics import BoundaryErrorRate, ConfusionMatrix
from geogla.paths import is_url, join_url
from geogla.publish import journal_path, output_set, recover, upload_set
from geogla.scene import open_raster
from geogla.stac import build_stac_item, parse_datetime, tiff_datetime, write_stac_item
from geogla.stages.result import StageResult
from geogla.store import RunStore
from geogla.vectorize import iter_polygons, write_geopackage


def output_names(stem: str) -> dict[str, str]:
    """The file names of a run's outputs: the class COG and its QGIS style (the legend's class
    names), the GeoPackage, the probability COG (when asked for), the STAC item and the metrics
    (with labels)."""
    return {"cog": f"{stem}.classes.tif", "legend": f"{stem}.classes.qml", "gpkg": f"{stem}.gpkg",
            "probabilities": f"{stem}.probabilities.tif", "stac": f"{stem}.stac.json",
            "metrics": f"{stem}.metrics.json"}


def output_paths(out_dir: str | os.PathLike[str], stem: str) -> dict[str, Path]:
    """Where a run's outputs go in the local folder ``out_dir`` (:func:`output_names`)."""
    return {kind: Path(out_dir) / name for kind, name in output_names(stem).items()}


def output_locations(out_dir: str, stem: str) -> dict[str, str]:
    """Where a run's outputs go: paths in a local folder, or URLs under an object-storage prefix."""
    return {kind: join_url(out_dir, name) for kind, name in output_names(stem).items()}


@contextmanager
def staged(out_dir: str, members: Sequence[str], retired: Sequence[str] = ()) -> Iterator[str]:
    """The local folder to write outputs in: ``out_dir`` itself, or, for a URL, a temporary folder
    whose ``members`` (file names, the commit record last) are uploaded when the block ends without
    an error (:func:`geogla.publish.upload_set`), ``retired`` objects removed; then it is removed."""
    if not is_url(out_dir):
        yield out_dir
        return
    with tempfile.TemporaryDirectory(prefix="geogla-outputs-") as folder:
        yield folder
        upload_set(folder, out_dir, members, retired)


def evaluate_labels(store_url: str, labels_path: str, out_dir: str) -> StageResult:
    """Score the stitched class raster against a label raster of class ids (255 = unlabelled).

    Streams block by block: mIoU and pixel accuracy from a confusion matrix, and the Boundary
    Error Rate over the edges of the run's own window grid (each block read with the row and
    column before it, so pairs across block borders count once).  Writes ``<stem>.metrics.json``.
    """
    store = RunStore.open(store_url, mode="r")
    cfg = store.config
    t0 = time.perf_counter()
    confusion = ConfusionMatrix(len(cfg.classes))
    ber = BoundaryErrorRate()
    # Window edges are on the working grid; the class raster is on the file's grid.
    row_edges, col_edges = store.grid.edges_on(*store.scene.georef.shape)
    classes = store.array("classes")
    with gdal_env(), open_raster(labels_path, what="label raster") as ds:
        for y1, x1, y2, x2 in store.blocks():
            top, left = int(y1 > 0), int(x1 > 0)
            pred = np.asarray(classes[y1 - top:y2, x1 - left:x2])
            gt = ds.read(1, window=Window(x1 - left, y1 - top, x2 - x1 + left, y2 - y1 + top))
            confusion.update(pred[top:, left:], gt[top:, left:])
            ber.update(pred, gt, row_edges, col_edges, origin=(y1 - top, x1 - left), context=(top, left))
    metrics = {"miou": confusion.miou(), "pixel_accuracy": confusion.pixel_accuracy(), "ber": ber.value()}
    report = {**metrics, "labels": labels_path, "classes": list(cfg.classes.names),
              "iou": dict(zip(cfg.classes.names, (float(v) for v in confusion.iou()), strict=True)),
              "weights": cfg.weights, "attention": cfg.attention.to_json()}
    name = output_names(store.scene.stem)["metrics"]
    with staged(out_dir, [name]) as folder, atomic_output(Path(folder) / name) as scratch:
        scratch.result.write_text(json.dumps(report, indent=2, allow_nan=True))
    return StageResult({"evaluate": time.perf_counter() - t0}, metrics=metrics)


def set_members(out_dir: str | os.PathLike[str], stem: str,
                save_probabilities: bool) -> tuple[list[Path], list[Path]]:
    """The files of a run's output set in the order they are published (the STAC item, the set's
    commit record, last), and the files of a previous set that this one retires (see
    :mod:`geogla.publish`): its metrics (the evaluation writes them after the set) and a
    probability COG that is no longer asked for."""
    paths = output_paths(out_dir, stem)
    optional = [paths["probabilities"]] if save_probabilities else []
    members = [paths["cog"], paths["legend"], *optional, paths["gpkg"], paths["stac"]]
    retired = [paths["metrics"], *([] if save_probabilities else [paths["probabilities"]])]
    return members, retired


def recover_outputs(out_dir: str | os.PathLike[str], stem: str) -> None:
    """Finish publishing the output set a stopped run had committed in ``out_dir`` and remove the
    temporaries of killed writes (:func:`geogla.publish.recover`); called when a run starts.
    Nothing to do for a URL: its sets are uploaded object by object (:func:`staged`)."""
    if is_url(str(out_dir)):
        return
    every = list(output_paths(out_dir, stem).values())
    recover(journal_path(out_dir, stem), every)


class ValidPixels:
    """The pixels of a class raster (numpy or zarr) that hold data, read by slices."""

    dtype = np.dtype(bool)

    def __init__(self, classes: Any) -> None:
        self.classes, self.shape = classes, classes.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        valid: np.ndarray = np.asarray(self.classes[key]) != NODATA_CLASS
        return valid


def write_outputs(store_url: str, out_dir: str) -> StageResult:
    """Write the class COG, the probability COG (when asked for), the styled GeoPackage and the
    STAC item from the stitched rasters, and publish them as one set (:func:`geogla.publish.output_set`;
    to a URL, built in a local temporary folder and uploaded, :func:`staged`)."""
    store = RunStore.open(store_url)
    scene = store.scene
    members, retired = set_members(out_dir, scene.stem, store.config.save_probabilities)
    with staged(out_dir, [m.name for m in members], [r.name for r in retired]) as folder:
        return _write_set(store, folder, output_locations(out_dir, scene.stem))


def _write_set(store: RunStore, out_dir: str, final: dict[str, str]) -> StageResult:
    """:func:`write_outputs` in the local folder ``out_dir``; ``final`` are the outputs' final
    locations (the STAC item's hrefs name them)."""
    scene, cfg = store.scene, store.config
    paths = output_paths(out_dir, scene.stem)
    members, retired = set_members(out_dir, scene.stem, cfg.save_probabilities)
    classes = store.array("classes")
    with output_set(journal_path(out_dir, scene.stem), members, retired) as pending:
        t0 = time.perf_counter()
        with gdal_env():  # geogla's GDAL settings (threads for the overviews) on whichever worker runs this
            write_class_cog(pending[paths["cog"]], classes, scene.georef, cfg.classes)
            Path(pending[paths["legend"]]).write_text(class_raster_qml(cfg.classes), encoding="utf-8")
            if cfg.save_probabilities:
                # masked where the class raster is nodata; read as 0..1 through the band scale
                write_float_cog(pending[paths["probabilities"]], store.array("probabilities"), scene.georef,
                                list(cfg.classes.names), tags={"GEOGLA_PROBABILITY_SCALE": "1/255"},
                                valid=ValidPixels(classes), scale=1 / 255)
        t1 = time.perf_counter()
        # Streamed: polygons go to the GeoPackage chunk row by chunk row, never all in memory.
        polygons = iter_polygons(classes, scene.georef, cfg.classes, min_area=cfg.min_area,
                                 simplify=cfg.simplify)
        write_geopackage(pending[paths["gpkg"]], polygons, scene.georef, cfg.classes)
        item = scene.item
        acquired: datetime | None
        if item is not None and item.datetime is not None:
            acquired = parse_datetime(item.datetime)  # the catalogue's acquisition time
        else:
            with gdal_env(), open_raster(scene.dataset_name) as ds:
                acquired = tiff_datetime(ds.tags())
        properties = {"geogla:model": cfg.model, "geogla:weights": cfg.weights,
                      "geogla:attention": cfg.attention.to_json(),
                      "geogla:source": ", ".join(os.path.basename(p) for p in scene.sources or [scene.path])}
        if item is not None:
            properties.update({"geogla:source_item": item.item_id, "geogla:source_asset": item.asset})
        # Built for the final paths: asset hrefs name the published files, not the temporaries.
        stac_item = build_stac_item(
            final["stac"],
            item_id=scene.stem,
            cog_path=final["cog"],
            gpkg_path=final["gpkg"],
            georef=scene.georef,
            class_list=cfg.classes,
            datetime=acquired,
            properties=properties,
            probabilities_path=final["probabilities"] if cfg.save_probabilities else None,
            legend_path=final["legend"],
            absolute_hrefs=cfg.stac_hrefs == "absolute",
            derived_from=[item.item_href] if item is not None else [],
        )
        write_stac_item(pending[paths["stac"]], stac_item)
    return StageResult({"cog": t1 - t0, "vectorize": time.perf_counter() - t1})

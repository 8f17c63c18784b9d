"""``geogla eval``: score ProxyCLIP and GLA attention on a benchmark split (docs/method.md sections 5-6).

Per image: the image (or its tile) is resized so that its long side is the protocol's (mmcv's size,
OpenCV's bilinear arithmetic: :mod:`geogla.resize`) and written to a working file; a run store is
made for it and the stages of :mod:`geogla.stages` encode the windows, embed the prompts and
attend.  The window logits are stitched on the resized image, resampled bilinearly to the label size,
turned into class probabilities and labels (background rule included), and scored at the label size:
a confusion matrix over the whole split (per-class IoU, mIoU, pixel accuracy) and the Boundary Error
Rate over the image's own window edges mapped to the label size.  With two attention modes the second
one reuses the encoded windows of the first (the run store keeps them when only the attention
changes), and the prompt embeddings are computed once per evaluation.

Why a working file instead of ``open_scene(..., resize_long_side=N)``: :class:`geogla.scene.SceneReader`
reads windows of the file's own pixels even when the scene has a smaller working size, so the
models would see a crop of the full-resolution image rather than the resized image.  Writing the
resized image makes the windows exact; the stitching to the label size is done here (bilinear on the
logits, as the protocol does) because the stored class raster is then on the working grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geogla import stages
from geogla.classes import NODATA_CLASS, ClassList
from geogla.datasets import DatasetError, DatasetSpec, DecodeStats, Sample, load_labels
from geogla.env import gdal_env
from geogla.errors import StoreError
from geogla.figures import Panel, comparison_figure, nearest_resize, save_figure
from geogla.metrics import BoundaryErrorRate, ConfusionMatrix
from geogla.models import SegmentationModel
from geogla.resize import long_side_shape, resize_linear
from geogla.runconfig import ATTENTION_MODES, RunConfig, attention_config
from geogla.scene import Scene, open_raster, open_scene
from geogla.stitching import block_logits, class_probabilities, labels_from_probabilities
from geogla.store import RunStore

#: Attention modes ``geogla eval`` compares, in table order, with their display names.
MODE_TITLES = {"proxyclip": "ProxyCLIP", "gla": "GLA"}
#: Longest side of the images in the figures.
FIGURE_SIDE = 448
#: Label rows resampled and classified at a time (bounds memory on 4000 x 3000 VDD images).
BAND_ROWS = 256


@dataclass(frozen=True)
class EvalOptions:
    """How to run an evaluation: model and weights, attention modes, figures, stores."""

    model: str = "default"
    weights: str = "pretrained"
    clip_weights: str | None = None
    vfm_weights: str | None = None
    device: str = "auto"
    modes: tuple[str, ...] = ("proxyclip", "gla")
    #: The encoders' and attention's precision.  float32 by default: a reproduction must give the same
    #: labels on every machine, and "auto" would pick 16-bit on some CPUs and GPUs only.
    precision: str = "float32"
    figures: int = 0
    keep_stores: bool = False
    batch_size: int = 16


@dataclass
class ModeScores:
    """Accumulated scores of one attention mode over the split."""

    confusion: ConfusionMatrix
    ber: BoundaryErrorRate = field(default_factory=BoundaryErrorRate)

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """mIoU, pixel accuracy, BER (percent) and per-class IoU (percent; None where undefined)."""
        iou = self.confusion.iou()
        return {"miou": _num(self.confusion.miou()), "pixel_accuracy": _num(self.confusion.pixel_accuracy()),
                "ber": _num(self.ber.value()),
                "iou": {n: _num(100.0 * float(v)) for n, v in zip(names, iou, strict=True)},
                "ber_pairs": self.ber.pairs, "ber_errors": self.ber.errors,
                "confusion": self.confusion.matrix.tolist()}


@dataclass
class ImageResult:
    """One image's size, window count and per-mode scores (percent)."""

    name: str
    label_shape: tuple[int, int]
    work_shape: tuple[int, int]
    windows: int
    scores: dict[str, dict[str, float | None]]
    figure: str | None = None


@dataclass
class EvalReport:
    """The result of an evaluation; :meth:`to_json` and :meth:`markdown` are what is written."""

    spec: DatasetSpec
    root: str
    split: str
    options: EvalOptions
    classes: ClassList
    scores: dict[str, ModeScores]
    images: list[ImageResult]
    available: int
    decode: DecodeStats
    timings: dict[str, float]
    wall: float

    def to_json(self) -> dict[str, Any]:
        names = list(self.classes.names)
        modes = {m: self.scores[m].summary(names) for m in self.options.modes}
        out: dict[str, Any] = {
            "dataset": self.spec.name,
            "source": self.spec.source,
            "root": self.root,
            "split": self.split,
            "images": len(self.images),
            "images_available": self.available,
            "model": self.options.model,
            "weights": self.options.weights,
            "quality_figure": self.options.weights != "random",
            "protocol": self.protocol(),
            "classes": names,
            "prompts": [list(s) for s in self.classes.synonyms],
            "label_classes": list(self.spec.label_names),
            "modes": modes,
        }
        if "proxyclip" in modes and "gla" in modes:
            out["difference"] = _difference(modes["gla"], modes["proxyclip"])
        if self.spec.published:
            out["published"] = dict(self.spec.published)
        out["labels"] = {
            "scored_pixels": self.decode.labelled,
            "ignored_pixels": self.decode.ignored,
            "unmatched_pixels": self.decode.unmatched,
            "unmatched_examples": sorted(self.decode.examples),
        }
        out["per_image"] = [
            {
                "name": r.name,
                "label_shape": list(r.label_shape),
                "work_shape": list(r.work_shape),
                "windows": r.windows,
                **r.scores,
                **({"figure": r.figure} if r.figure else {}),
            }
            for r in self.images
        ]
        out["timings"] = {k: round(v, 3) for k, v in sorted(self.timings.items())}
        out["wall_seconds"] = round(self.wall, 3)
        return out

    def protocol(self) -> dict[str, Any]:
        s = self.spec
        bg = self.classes.background
        return {"resize_long_side": s.resize_long_side, "crop": s.crop, "stride": s.stride,
                "logit_scale": s.logit_scale, "tile": list(s.tile) if s.tile else None,
                "background": self.classes.names[bg] if bg is not None else None,
                "prob_threshold": self.classes.prob_threshold}

    def markdown(self) -> str:
        """The report as Markdown: settings, then one table with a column per attention mode."""
        data = self.to_json()
        modes = list(self.options.modes)
        both = "difference" in data
        p = data["protocol"]
        lines = [f"# geogla eval: {self.spec.name} ({self.split})", ""]
        if self.options.weights == "random":
            lines += ["**Random weights: these numbers measure the pipeline, not segmentation quality.**", ""]
        limited = (
            f" (the first {len(self.images)} of {self.available})"
            if len(self.images) < self.available
            else ""
        )
        resize = f"long side resized to {p['resize_long_side']}" if p["resize_long_side"] else "no resize"
        tiles = f", cut into {p['tile'][0]} x {p['tile'][1]} tiles first" if p["tile"] else ""
        bg = (f"; pixels below probability {p['prob_threshold']:g} become {p['background']}"
              if p["background"] is not None and p["prob_threshold"] > 0 else "")
        lines += [
            f"- images: {len(self.images)}{limited}, root `{self.root}`",
            f"- model: {self.options.model}, weights: {self.options.weights}",
            f"- protocol: {resize}, crop {p['crop']}, stride {p['stride']}, "
            f"logit scale {p['logit_scale']:g}{tiles}{bg}",
            f"- preset follows: {self.spec.source}",
        ]
        if self.spec.published:
            pub = self.spec.published
            vals = ", ".join(f"{MODE_TITLES.get(k, k)} {v}" for k, v in (pub.get("miou") or {}).items())
            lines.append(f"- published mIoU with real weights: {vals}; source: {pub.get('source', '')}")
        if self.decode.unmatched:
            lines.append(f"- {self.decode.unmatched} label pixels had values the legend does not know "
                         f"({', '.join(sorted(self.decode.examples))}); they were not scored")
        header = (
            "| | " + " | ".join(MODE_TITLES[m] for m in modes) + (" | GLA - ProxyCLIP |" if both else " |")
        )
        rule = "|---|" + "---:|" * (len(modes) + (1 if both else 0))
        lines += ["", header, rule]

        def row(label: str, key: str, sub: str | None = None) -> None:
            vals = [data["modes"][m][key] if sub is None else data["modes"][m][key][sub] for m in modes]
            cells = [_fmt(v) for v in vals]
            if both:
                d = data["difference"][key] if sub is None else data["difference"][key][sub]
                cells.append(_fmt(d, signed=True))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

        row("**mIoU**", "miou")
        row("pixel accuracy", "pixel_accuracy")
        row("BER (lower is better)", "ber")
        for name in self.classes.names:
            row(f"IoU {name}", "iou", name)
        note = (
            "All values in percent. IoU and mIoU from the confusion matrix of the whole split; BER over "
            "each image's window edges, at the label size. n/a: class absent from both labels and "
            "predictions."
        )
        lines += ["", note, ""]
        return "\n".join(lines)


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    def sub(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else round(x - y, 4)

    return {
        "miou": sub(a["miou"], b["miou"]),
        "pixel_accuracy": sub(a["pixel_accuracy"], b["pixel_accuracy"]),
        "ber": sub(a["ber"], b["ber"]),
        "iou": {k: sub(a["iou"][k], b["iou"][k]) for k in a["iou"]},
    }


# -- the working image ----------------------------------------------------------------------------

def prepare_image(sample: Sample, resize_long_side: int | None, path: Path) -> tuple[str, tuple[int, int]]:
    """The file the models read for ``sample`` and the label size ``(H, W)``.

    The image itself when it is used whole, unresized and not a JPEG; else its tile and/or resized
    version, the three bands fed to the models (as :func:`geogla.scene.open_scene` chooses them),
    written to ``path`` (GeoTIFF).  JPEGs are decoded as the reference decodes them
    (:func:`read_image`).
    """
    source = open_scene(sample.image)
    height, width = source.georef.shape
    box = sample.box or (0, 0, height, width)
    y1, x1, y2, x2 = box
    if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
        raise DatasetError(f"The tile {box} lies outside the image {sample.image} ({width} x {height}).")
    label_shape = (y2 - y1, x2 - x1)
    work = long_side_shape(label_shape, resize_long_side) if resize_long_side else label_shape
    jpeg = source.driver == "JPEG"
    if sample.box is None and work == label_shape and not jpeg:
        return str(sample.image), label_shape
    pixels = resize_linear(read_image(source, box), work)
    profile: dict[str, Any] = {"driver": "GTiff", "width": work[1], "height": work[0], "count": 3,
                               "dtype": pixels.dtype, "tiled": True, "blockxsize": 256, "blockysize": 256}
    if pixels.dtype == np.uint8:
        profile["photometric"] = "RGB"
    with gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return str(path), label_shape


def read_image(scene: Scene, box: tuple[int, int, int, int]) -> np.ndarray:
    """The fed bands of ``scene``'s pixels ``[y1:y2, x1:x2]``, ``(3, h, w)`` in the file's dtype.

    A JPEG is decoded with Pillow's libjpeg-turbo, which gives the pixels the reference's
    OpenCV ``imread`` gives (mmcv's ``LoadImageFromFile``; tests compare the two on real JPEGs).
    GDAL's libjpeg 9 upsamples subsampled chroma differently (DCT scaling instead of the triangular
    filter): on the Dubai sample JPEGs (4:2:0) it differs from OpenCV in 17% of the values, 99% of
    them by at most 2 grey levels and up to 41, while greyscale and 4:4:4 JPEGs decode identically.
    Other formats are read through GDAL (PNG and TIFF are lossless: every decoder agrees).
    """
    y1, x1, y2, x2 = box
    if scene.driver == "JPEG":
        with Image.open(scene.path) as img:
            rgb = np.asarray(img.convert("RGB"))
        return np.ascontiguousarray(rgb[y1:y2, x1:x2].transpose(2, 0, 1))
    with gdal_env(), open_raster(scene.path) as ds:
        return np.asarray(ds.read(list(scene.band_indexes), window=Window(x1, y1, x2 - x1, y2 - y1)))


# -- stitching to the label size ------------------------------------------------------------------

def predict_labels(
    store: RunStore, classes: ClassList, logit_scale: float, shape: tuple[int, int]
) -> np.ndarray:
    """Class ids ``shape`` uint8 of an attended store, by the stitch stage's own steps on the label
    grid: the window logits stitched on the store's working image, resampled bilinearly to
    ``shape`` (:func:`geogla.stitching.block_logits`, in bands of :data:`BAND_ROWS` rows), then
    class probabilities, labels and the background rule; pixels no valid window covers are 255."""
    text = torch.from_numpy(store.read("text"))
    work_shape = store.scene.georef.shape  # an evaluation's store reads the working image as its file
    scale = (shape[0] / work_shape[0], shape[1] / work_shape[1])
    out = np.empty(shape, dtype=np.uint8)
    for r0 in range(0, shape[0], BAND_ROWS):
        band = (r0, 0, min(r0 + BAND_ROWS, shape[0]), shape[1])
        logits, covered = block_logits(
            lambda box: stages.working_logits(store, box, text), band, scale, work_shape
        )
        labels = labels_from_probabilities(class_probabilities(logits, classes, logit_scale), classes)
        labels[~covered] = NODATA_CLASS
        out[band[0]:band[2]] = labels.numpy()
    return out


# -- the evaluation ---------------------------------------------------------------------------------

def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "__"))


def _open_store(url: str, scene: Scene, config: RunConfig, model: SegmentationModel) -> RunStore:
    def create(overwrite: bool) -> RunStore:
        store, _ = RunStore.create_or_resume(url, scene, config, **model.store_dims(), overwrite=overwrite)
        return store

    try:
        return create(False)
    except StoreError:  # a kept store of other encoder settings: start afresh
        return create(True)


class _TextCache:
    """Prompt embeddings computed once per evaluation and copied into every store (the class list
    and model are the same for every image and mode)."""

    def __init__(self) -> None:
        self.text: np.ndarray | None = None

    def fill(self, store: RunStore, timings: dict[str, float]) -> None:
        if store.is_done("text"):
            return
        if self.text is None:
            stages.add_seconds(timings, stages.embed_text(store.url))
            self.text = store.read("text")
            return
        store.array("text")[:] = self.text
        store.mark_done("text")


def _display_rgb(scene: Scene, shape: tuple[int, int]) -> np.ndarray:
    """The working image as uint8 ``(h, w, 3)`` at ``shape`` for figures."""
    with gdal_env(), open_raster(scene.path) as ds:
        data = ds.read(list(scene.band_indexes), out_shape=(3, *shape), resampling=Resampling.bilinear)
    rgb = scene.to_unit(data.astype(np.float32))
    return cast(np.ndarray, (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))


def evaluate_dataset(spec: DatasetSpec, samples: Sequence[Sample], options: EvalOptions, out_dir: str | Path,
                     *, root: str = "", split: str | None = None, available: int | None = None,
                     progress: Callable[[int, int, ImageResult], None] | None = None) -> EvalReport:
    """Evaluate every attention mode of ``options`` on ``samples``; figures go to ``OUT/figures``.

    Per-image stores live in a temporary folder, or in ``OUT/stores`` with ``keep_stores`` (a
    repeated evaluation then reuses their encoded windows).  ``progress(i, n, result)`` is called
    after each image.  Raises :class:`DatasetError` when a mask's size differs from its image's.
    """
    for m in options.modes:
        if m not in ATTENTION_MODES:
            raise DatasetError(f"Unknown attention mode {m!r}; known: {', '.join(ATTENTION_MODES)}.")
    out = Path(out_dir)
    classes = spec.class_list()
    model = stages.load_model(options.model, options.weights, options.clip_weights, options.vfm_weights,
                              options.device, options.precision)
    configs = {
        m: RunConfig(
            classes=classes,
            model=options.model,
            weights=options.weights,
            clip_weights=options.clip_weights,
            vfm_weights=options.vfm_weights,
            precision=options.precision,
            crop=spec.crop,
            stride=spec.stride,
            attention=attention_config(options.model, m, precision=options.precision),
            logit_scale=spec.logit_scale,
            device=options.device,
            batch_size=options.batch_size,
        )
        for m in options.modes
    }
    scores = {m: ModeScores(ConfusionMatrix(len(classes))) for m in options.modes}
    decode = DecodeStats()
    timings: dict[str, float] = {}
    results: list[ImageResult] = []
    text = _TextCache()
    t_start = time.perf_counter()
    if options.keep_stores:
        work_root = out / "stores"
        work_root.mkdir(parents=True, exist_ok=True)
        cleanup = False
    else:
        work_root = Path(tempfile.mkdtemp(prefix="geogla-eval-"))
        cleanup = True
    try:
        for i, sample in enumerate(samples):
            stem = _safe(sample.name)
            t0 = time.perf_counter()
            image_path, label_shape = prepare_image(
                sample, spec.resize_long_side, work_root / f"{stem}.work.tif"
            )
            labels, stats = load_labels(sample, spec.legend)
            decode.merge(stats)
            if labels.shape != label_shape:
                raise DatasetError(
                    f"The mask {sample.mask} is {labels.shape[1]} x {labels.shape[0]} pixels but "
                    f"its image is {label_shape[1]} x {label_shape[0]}."
                )
            scene = open_scene(image_path)
            timings["prepare"] = timings.get("prepare", 0.0) + time.perf_counter() - t0
            url = str(work_root / f"{stem}.zarr")
            preds: dict[str, np.ndarray] = {}
            image_scores: dict[str, dict[str, float | None]] = {}
            store: RunStore | None = None
            for mode in options.modes:
                store = _open_store(url, scene, configs[mode], model)
                for ids in stages.window_batches(store):
                    stages.add_seconds(timings, stages.encode_windows(url, ids))
                text.fill(store, timings)
                stages.add_seconds(timings, stages.attend_all(url))
                t1 = time.perf_counter()
                pred = predict_labels(store, classes, spec.logit_scale, label_shape)
                rows, cols = store.grid.edges_on(*label_shape)
                timings["stitch"] = timings.get("stitch", 0.0) + time.perf_counter() - t1
                cm = ConfusionMatrix(len(classes))
                cm.update(pred, labels)
                ber = BoundaryErrorRate()
                ber.update(pred, labels, rows, cols)
                scores[mode].confusion.merge(cm)
                scores[mode].ber.merge(ber)
                image_scores[mode] = {"miou": _num(cm.miou()), "pixel_accuracy": _num(cm.pixel_accuracy()),
                                      "ber": _num(ber.value())}
                if i < options.figures:
                    preds[mode] = pred
            assert store is not None
            result = ImageResult(sample.name, label_shape, scene.georef.shape, len(store.grid), image_scores)
            if i < options.figures:
                result.figure = _figure(
                    out / "figures" / f"{stem}.png",
                    spec,
                    split or spec.split,
                    sample,
                    scene,
                    store,
                    labels,
                    preds,
                    image_scores,
                    classes,
                    options,
                )
            results.append(result)
            if not options.keep_stores:
                shutil.rmtree(url, ignore_errors=True)
                if image_path != str(sample.image):
                    os.remove(image_path)
            if progress is not None:
                progress(i + 1, len(samples), result)
    finally:
        if cleanup:
            shutil.rmtree(work_root, ignore_errors=True)
    return EvalReport(
        spec=spec,
        root=root,
        split=split or spec.split,
        options=options,
        classes=classes,
        scores=scores,
        images=results,
        available=available if available is not None else len(samples),
        decode=decode,
        timings=timings,
        wall=time.perf_counter() - t_start,
    )


def _figure(
    path: Path,
    spec: DatasetSpec,
    split: str,
    sample: Sample,
    scene: Scene,
    store: RunStore,
    labels: np.ndarray,
    preds: dict[str, np.ndarray],
    image_scores: dict[str, dict[str, float | None]],
    classes: ClassList,
    options: EvalOptions,
) -> str:
    """Write the comparison figure of one image; return its path relative to the output folder."""
    h, w = scene.georef.shape
    f = FIGURE_SIDE / max(h, w)
    shape = (max(1, round(h * f)), max(1, round(w * f)))
    rows, cols = store.grid.edges()
    edges = ([r * shape[0] / h for r in rows], [c * shape[1] / w for c in cols])
    panels = [Panel(f"image ({w} x {h} seen by the models)", _display_rgb(scene, shape)),
              Panel(f"ground truth ({labels.shape[1]} x {labels.shape[0]})", nearest_resize(labels, shape))]
    for mode, pred in preds.items():
        s = image_scores[mode]
        panels.append(Panel(f"{MODE_TITLES[mode]}: mIoU {_fmt(s['miou'])}, BER {_fmt(s['ber'])}",
                            nearest_resize(pred, shape), edges=True))
    warning = ("random weights: the predictions are meaningless (a pipeline check, not a result)"
               if options.weights == "random" else None)
    fig = comparison_figure(
        panels,
        classes.names,
        classes.colours,
        edges,
        title=f"{spec.name} {split}: {sample.name} (dashed: window edges)",
        warning=warning,
    )
    save_figure(path, fig)
    return str(path.relative_to(path.parent.parent))


def write_report(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``OUT/metrics.json`` (NaN written as null) and ``OUT/metrics.md``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "metrics.md"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(report.markdown())
    return paths

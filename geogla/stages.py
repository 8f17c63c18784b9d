"""The stages of a run.  Each reads its inputs from the run store and writes its outputs there.

Stages take a store URL (and which windows or blocks to do), never open datasets or models, so a
Dask task can run one on any worker and a crashed run can be resumed: a stage first looks at the
store's done flags and skips what is finished.  Each returns a small dict of timings (seconds).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from geogla.classes import NODATA_CLASS, ClassList
from geogla.cog import atomic_output, write_class_cog
from geogla.env import gdal_env
from geogla.errors import SceneError
from geogla.gla import attend
from geogla.metrics import BoundaryErrorRate, ConfusionMatrix
from geogla.models import SegmentationModel, create_model
from geogla.scene import Scene, SceneReader, open_raster
from geogla.store import RunStore
from geogla.vectorize import iter_polygons, write_geopackage

#: Windows projected per batch after attention (bounds the memory of the projection).
PROJECT_BATCH = 64


@functools.lru_cache(maxsize=2)
def load_model(name: str, weights: str, clip_weights: str | None, vfm_weights: str | None,
               device: str) -> SegmentationModel:
    """The model of a run, loaded once per process and reused by every task there."""
    return create_model(name, weights=weights, clip_weights=clip_weights, vfm_weights=vfm_weights, device=device)


def model_for(store: RunStore) -> SegmentationModel:
    c = store.config
    return load_model(c.model, c.weights, c.clip_weights, c.vfm_weights, c.device)


def window_batches(store: RunStore) -> list[list[int]]:
    """Window ids grouped by encode batch (one batch per chunk of the window arrays)."""
    L, B = len(store.grid), store.config.batch_size
    return [list(range(s, min(s + B, L))) for s in range(0, L, B)]


def encode_windows(store_url: str, window_ids: Sequence[int]) -> dict[str, float]:
    """Encode one batch of windows: read them, run both encoders, store keys and values.

    Windows that are entirely nodata are marked invalid and not encoded.  ``window_ids`` must be
    one whole batch of :func:`window_batches`.
    """
    store = RunStore.open(store_url)
    ids = list(window_ids)
    sl = slice(ids[0], ids[-1] + 1)
    if bool(np.all(store.read("windows/encoded", sl))):
        return {"encode_skipped": 1.0}
    t0 = time.perf_counter()
    boxes = store.read("windows/box", sl)
    with SceneReader(store.scene) as reader:
        pixels = [reader.read((int(y1), int(x1), int(y2), int(x2))) for y1, x1, y2, x2 in boxes]
    t_read = time.perf_counter() - t0
    valid = np.array([bool(v.any()) for _, v in pixels])
    model = model_for(store)
    n = store.tokens_per_side
    keys = np.zeros((len(ids), n * n, model.key_dim), dtype=np.float32)
    values = np.zeros((len(ids), n * n, model.value_dim), dtype=np.float32)
    t1 = time.perf_counter()
    if valid.any():
        images = torch.from_numpy(np.stack([p for (p, _), ok in zip(pixels, valid) if ok]))
        k, v = model.encode(images.to(model.device))
        keys[valid] = k.float().cpu().numpy()
        values[valid] = v.float().cpu().numpy()
    t_enc = time.perf_counter() - t1
    store.array("keys")[sl] = keys
    store.array("values")[sl] = values
    store.array("windows/valid")[sl] = valid
    store.array("windows/encoded")[sl] = True  # last: marks the batch done
    return {"read": t_read, "encode": t_enc}


def embed_text(store_url: str) -> dict[str, float]:
    """Embed every prompt of the class list (80 templates each) into ``text``."""
    store = RunStore.open(store_url)
    if store.is_done("text"):
        return {}
    t0 = time.perf_counter()
    prompts = list(store.config.classes.prompts)
    if prompts:
        emb = model_for(store).embed_text(prompts)
        store.array("text")[:] = emb.float().cpu().numpy()
    store.mark_done("text")
    return {"text": time.perf_counter() - t0}


def attend_windows(store_url: str, *_after: Any) -> dict[str, float]:
    """Attention over all valid windows, then CLIP's projection and the cosine logits per token."""
    store = RunStore.open(store_url)
    if store.is_done("attend"):
        return {}
    t0 = time.perf_counter()
    cfg = store.config
    valid = store.read("windows/valid")
    ids = np.nonzero(valid)[0]
    L, N = len(valid), store.tokens_per_side ** 2
    P = len(cfg.classes.prompts)
    logits = np.zeros((L, N, P), dtype=np.float32)
    t_att = t_proj = 0.0
    if len(ids) and P:
        model = model_for(store)
        keys = torch.from_numpy(store.read_rows("keys", ids))
        values = torch.from_numpy(store.read_rows("values", ids))
        offsets = torch.from_numpy(store.grid.token_offsets(store.tokens_per_side)[ids])
        t1 = time.perf_counter()
        attended = attend(keys.to(model.device), values.to(model.device), config=cfg.attention,
                          offsets=offsets.to(model.device))
        t_att = time.perf_counter() - t1
        text = torch.from_numpy(store.read("text")).to(model.device)
        t2 = time.perf_counter()
        for s in range(0, len(ids), PROJECT_BATCH):
            feats = F.normalize(model.project(attended[s:s + PROJECT_BATCH]).float(), dim=-1)
            logits[ids[s:s + PROJECT_BATCH]] = (feats @ text.T).cpu().numpy()
        t_proj = time.perf_counter() - t2
    store.array("logits")[:] = logits
    store.mark_done("attend")
    return {"attend": t_att, "project": t_proj, "attend_io": time.perf_counter() - t0 - t_att - t_proj}


def classify(pixel_logits: torch.Tensor, classes: ClassList, logit_scale: float) -> torch.Tensor:
    """Class ids from per-pixel prompt logits ``(P, h, w)`` (method.md section 4, steps 3 and 4).

    Softmax over all prompts of ``logit_scale * logits``; a class's probability is the maximum over
    its synonyms; label = argmax; pixels whose top probability is below the threshold get the
    background class.  Returns uint8 ``(h, w)``.
    """
    probs = torch.softmax(logit_scale * pixel_logits, dim=0)
    class_probs = torch.zeros((len(classes), *probs.shape[1:]), dtype=probs.dtype)
    owner = torch.tensor(classes.prompt_class, dtype=torch.long)
    for c in range(len(classes)):
        members = probs[owner == c]
        if len(members):
            class_probs[c] = members.amax(dim=0)
    top, label = class_probs.max(dim=0)
    if classes.background is not None and classes.prob_threshold > 0:
        label[top < classes.prob_threshold] = classes.background
    return label.to(torch.uint8)


def stitch_block(store_url: str, block_index: int, *_after: Any) -> dict[str, float]:
    """Stitch one output block of the class raster from the windows that cover it.

    Each covering window's token logits are bilinearly resized to the crop, summed into the block
    and divided by the number of windows covering each pixel; then :func:`classify`.  Nodata pixels
    get class 255.
    """
    store = RunStore.open(store_url)
    if bool(store.read("blocks/stitched", block_index)):
        return {}
    t0 = time.perf_counter()
    cfg = store.config
    y1, x1, y2, x2 = store.blocks()[block_index]
    grid = store.grid
    valid_windows = store.read("windows/valid")
    ids = [int(i) for i in grid.windows_intersecting(y1, x1, y2, x2) if valid_windows[i]]
    n = store.tokens_per_side
    P = len(cfg.classes.prompts)
    acc = torch.zeros((P, y2 - y1, x2 - x1), dtype=torch.float32)
    count = torch.zeros((y2 - y1, x2 - x1), dtype=torch.float32)
    if ids and P:
        token_logits = torch.from_numpy(store.read_rows("logits", ids))
        for k, wid in enumerate(ids):
            wy1, wx1, wy2, wx2 = grid.window(wid)
            grid_logits = token_logits[k].T.reshape(1, P, n, n)
            up = F.interpolate(grid_logits, size=(wy2 - wy1, wx2 - wx1), mode="bilinear", align_corners=False)[0]
            oy1, ox1, oy2, ox2 = max(y1, wy1), max(x1, wx1), min(y2, wy2), min(x2, wx2)
            acc[:, oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1] += up[:, oy1 - wy1:oy2 - wy1, ox1 - wx1:ox2 - wx1]
            count[oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1] += 1
    covered = count > 0
    labels = classify(acc / count.clamp(min=1), cfg.classes, cfg.logit_scale) if P else \
        torch.full(count.shape, cfg.classes.background or 0, dtype=torch.uint8)
    with SceneReader(store.scene) as reader:
        valid = torch.from_numpy(reader.read_valid((y1, x1, y2, x2)))
    labels[~(covered & valid)] = NODATA_CLASS
    store.array("classes")[y1:y2, x1:x2] = labels.numpy()
    store.array("blocks/stitched")[block_index] = True
    return {"stitch": time.perf_counter() - t0}


def output_paths(out_dir: str | os.PathLike[str], stem: str) -> dict[str, Path]:
    """Where a run's outputs go: the class COG, the GeoPackage and (with labels) the metrics."""
    out = Path(out_dir)
    return {"cog": out / f"{stem}.classes.tif", "gpkg": out / f"{stem}.gpkg",
            "metrics": out / f"{stem}.metrics.json"}


def check_labels(labels_path: str, scene: Scene) -> None:
    """Raise :class:`SceneError` unless ``labels_path`` is a one-band raster the size of ``scene``."""
    with gdal_env():
        ds = open_raster(labels_path, what="label raster")
        with ds:
            if (ds.height, ds.width) != scene.georef.shape:
                raise SceneError(f"The label raster {labels_path} is {ds.width} x {ds.height} pixels but the scene "
                                 f"is {scene.georef.width} x {scene.georef.height}.")


def evaluate(store_url: str, labels_path: str, out_dir: str, *_after: Any) -> dict[str, float]:
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
    row_edges, col_edges = store.grid.edges()
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
    path = output_paths(out_dir, store.scene.stem)["metrics"]
    with atomic_output(path) as scratch:
        scratch.result.write_text(json.dumps(report, indent=2, allow_nan=True))
    return {"evaluate": time.perf_counter() - t0, **{f"metric:{k}": v for k, v in metrics.items()}}


def write_outputs(store_url: str, out_dir: str, *_after: Any) -> dict[str, float]:
    """Write the class COG and the styled GeoPackage from the stitched class raster."""
    store = RunStore.open(store_url)
    scene, cfg = store.scene, store.config
    paths = output_paths(out_dir, scene.stem)
    classes = store.array("classes")
    t0 = time.perf_counter()
    write_class_cog(paths["cog"], classes, scene.georef, cfg.classes)
    t1 = time.perf_counter()
    # Streamed: polygons go to the GeoPackage chunk row by chunk row, never all in memory.
    write_geopackage(paths["gpkg"], iter_polygons(classes, scene.georef, cfg.classes), scene.georef, cfg.classes)
    store.mark_done("outputs")
    return {"cog": t1 - t0, "vectorize": time.perf_counter() - t1}

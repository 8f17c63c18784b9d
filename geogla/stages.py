"""The stages of a run.  Each reads its inputs from the run store and writes its outputs there.

Stages take a store URL (and which windows or blocks to do), never open datasets or models, so a
Dask task can run one on any worker and a crashed run can be resumed: a stage first looks at the
store's done flags and skips what is finished.  Each returns a small dict of timings (seconds).
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from geogla.classes import NODATA_CLASS, ClassList
from geogla.cog import atomic_output, write_class_cog, write_float_cog
from geogla.env import gdal_env
from geogla.errors import SceneError
from geogla.gla import GLAConfig, attend, compute_dtypes
from geogla.gla.prototypes import FarSample, summarize
from geogla.gla.scalable import ScalableAttention
from geogla.metrics import BoundaryErrorRate, ConfusionMatrix
from geogla.models import SegmentationModel, create_model
from geogla.scene import Scene, SceneReader, open_raster
from geogla.stac import build_stac_item, tiff_datetime, write_stac_item
from geogla.store import RunStore
from geogla.vectorize import iter_polygons, write_geopackage

#: Windows per attend task (whole encode batches): enough to amortise reading the summary.
ATTEND_TASK_WINDOWS = 64
#: Windows an attend task keeps after reading them (MB): the near windows of its next batches.
ATTEND_CACHE_MB = 128


_model_lock = threading.Lock()


def load_model(name: str, weights: str, clip_weights: str | None, vfm_weights: str | None,
               device: str) -> SegmentationModel:
    """The model of a run, loaded once per process and reused by every task there."""
    with _model_lock:  # a worker's threads asking at once must not each load a copy (lru_cache would)
        return _cached_model(name, weights, clip_weights, vfm_weights, device)


@functools.lru_cache(maxsize=2)
def _cached_model(name: str, weights: str, clip_weights: str | None, vfm_weights: str | None,
                  device: str) -> SegmentationModel:
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
    sl = _batch_slice(ids)
    if bool(np.all(store.read("windows/encoded", sl))):
        return {"encode_skipped": 1.0}
    t0 = time.perf_counter()
    boxes = store.read("windows/box", sl)
    with SceneReader(store.scene) as reader:
        pixels = [reader.read((int(y1), int(x1), int(y2), int(x2))) for y1, x1, y2, x2 in boxes]
    t_read = time.perf_counter() - t0
    valid = np.array([bool(v.any()) for _, v in pixels])
    model = model_for(store)
    n = store.tokens_per_window
    keys = np.zeros((len(ids), n, model.key_dim), dtype=np.float32)
    values = np.zeros((len(ids), n, model.value_dim), dtype=np.float32)
    t1 = time.perf_counter()
    if valid.any():
        canvas = store.grid.canvas
        images = torch.from_numpy(np.stack([canvas.place(rgb, ok, model.pad_colour)
                                            for (rgb, ok), good in zip(pixels, valid, strict=True) if good]))
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


class StoreWindows:
    """The valid windows of a run store as a :class:`geogla.gla.source.WindowSource`.

    Window ``i`` of the source is store window ``rows[i]``; runs of consecutive store windows are
    read with one slice.  With ``cache_mb``, recently read windows are kept (least recently used
    first out): scalable attention reads each window for several neighbouring batches.  Passes
    over every window (the summary) read each once and need no cache.
    """

    def __init__(self, store: RunStore, rows: np.ndarray, cache_mb: int = 0) -> None:
        self.rows = rows
        self._arrays = {"keys": store.array("keys"), "values": store.array("values")}
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        per_entry = 4 * self.n_tokens * max(int(a.shape[2]) for a in self._arrays.values())
        self._capacity = cache_mb * 2**20 // per_entry  # window keys or values

    @property
    def n_windows(self) -> int:
        return len(self.rows)

    @property
    def n_tokens(self) -> int:
        return int(self._arrays["keys"].shape[1])

    def keys(self, windows: Sequence[int]) -> torch.Tensor:
        return self._read("keys", windows)

    def values(self, windows: Sequence[int]) -> torch.Tensor:
        return self._read("values", windows)

    def _read(self, name: str, windows: Sequence[int]) -> torch.Tensor:
        array = self._arrays[name]
        found: dict[int, torch.Tensor] = {}
        for w in windows:
            hit = self._cache.get((name, int(w)))
            if hit is not None:
                found[int(w)] = hit
                self._cache.move_to_end((name, int(w)))
        missing = sorted({int(w) for w in windows} - found.keys())
        start = 0
        while start < len(missing):  # one read per run of consecutive store rows
            stop = start + 1
            while stop < len(missing) and self.rows[missing[stop]] == self.rows[missing[stop - 1]] + 1:
                stop += 1
            r0 = int(self.rows[missing[start]])
            block = torch.from_numpy(np.asarray(array[r0:r0 + stop - start]))
            for k, w in enumerate(missing[start:stop]):
                found[w] = block[k]
                if self._capacity:
                    # A copy: a view would keep the whole run it was read with alive, and on a wide
                    # scene those runs span a row of windows each (memory growing with the scene).
                    self._cache[(name, w)] = block[k].clone()
            start = stop
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        if not found:
            return torch.empty(0, self.n_tokens, int(array.shape[2]))
        return torch.stack([found[int(w)] for w in windows])


def attention_mode(store: RunStore) -> Literal["window", "exact", "scalable"]:
    """How the run's attention is computed: ``"window"`` (each window alone, no key-value
    extension), ``"exact"`` or ``"scalable"`` (:meth:`GLAConfig.memory_mode` on the grid's
    ``L * N`` tokens, nodata windows included, so that the graph is known before encoding)."""
    cfg = store.config.attention
    if not cfg.kv_extension:
        return "window"
    return cfg.memory_mode(len(store.grid) * store.tokens_per_window)


def _scalable_dtypes(store: RunStore, model: SegmentationModel) -> tuple[torch.dtype, torch.dtype]:
    like = torch.empty(0, dtype=torch.float32, device=model.device)
    return compute_dtypes(store.config.attention.precision, like)


def summarize_keys(store_url: str) -> dict[str, float]:
    """Scalable attention's far summary of all valid windows (two passes over the keys), stored
    under ``summary/``; nothing to do in the other attention modes."""
    store = RunStore.open(store_url)
    if store.is_done("summary"):
        return {}
    t0 = time.perf_counter()
    if attention_mode(store) == "scalable":
        ids = np.nonzero(store.read("windows/valid"))[0]
        if len(ids):
            model = model_for(store)
            cdtype, adtype = _scalable_dtypes(store, model)
            sample = summarize(StoreWindows(store, ids), store.config.attention, cdtype, adtype,
                               torch.device(model.device))
            store.write_tensors("summary", {k: v.numpy() for k, v in sample.to_tensors().items()})
    store.mark_done("summary")
    return {"summary": time.perf_counter() - t0}


def attend_batches(store_url: str, batches: Sequence[int]) -> dict[str, float]:
    """Attention, then CLIP's projection, for the given encode batches (indexes into
    :func:`window_batches`): L2-normalised features per token, written batch by batch.

    Scalable attention reads only the windows near each batch (and the stored summary); attention
    inside each window reads the batch and, for query smoothing, the windows overlapping it.
    Exact attention needs every window: its graph has one task over all batches.
    """
    store = RunStore.open(store_url)
    all_batches = window_batches(store)
    todo = [b for b in batches if not bool(np.all(store.read("windows/attended", _batch_slice(all_batches[b]))))]
    if not todo:
        return {}
    t0 = time.perf_counter()
    mode, cfg = attention_mode(store), store.config.attention
    valid = store.read("windows/valid")
    rows = np.nonzero(valid)[0]
    model = model_for(store)
    device = torch.device(model.device)
    source = StoreWindows(store, rows, cache_mb=ATTEND_CACHE_MB)
    n = store.tokens_per_window
    offsets = torch.from_numpy(store.grid.token_offsets(store.token_size)[rows])
    exact: torch.Tensor | None = None
    scalable: ScalableAttention | None = None
    if mode == "exact" and len(rows):
        every = list(range(len(rows)))
        exact = attend(source.keys(every).to(device), source.values(every).to(device),
                       config=replace(cfg, memory="exact"), offsets=offsets.to(device), grid=store.token_grid)
    elif mode == "scalable" and len(rows):
        cdtype, adtype = _scalable_dtypes(store, model)
        tensors = {k: torch.from_numpy(v) for k, v in store.read_tensors("summary").items()}
        scalable = ScalableAttention(FarSample.from_tensors(tensors, cdtype, adtype, device), offsets, cfg,
                                     cdtype, adtype, store.token_grid)
    t_att = t_proj = 0.0
    for b in todo:
        ids = all_batches[b]
        sl = _batch_slice(ids)
        local = np.searchsorted(rows, [i for i in ids if valid[i]])
        features = np.zeros((len(ids), n, store.embed_dim), dtype=np.float32)
        if len(local):
            t1 = time.perf_counter()
            if exact is not None:
                attended = exact[torch.from_numpy(local).to(exact.device)]
            elif scalable is not None:
                attended = scalable(source, local.tolist())
            else:
                attended = _attend_each_window(source, local, offsets, cfg, store, device)
            t2 = time.perf_counter()
            feats = F.normalize(model.project(attended.to(device=device, dtype=torch.float32)).float(), dim=-1)
            features[valid[sl]] = feats.cpu().numpy()
            t_att, t_proj = t_att + t2 - t1, t_proj + time.perf_counter() - t2
        store.array("features")[sl] = features
        store.array("windows/attended")[sl] = True  # last: marks the batch done
    return {"attend": t_att, "project": t_proj, "attend_io": time.perf_counter() - t0 - t_att - t_proj}


def attend_all(store_url: str) -> dict[str, float]:
    """The summary and every attend batch, in this process (for callers without a task graph)."""
    timings = summarize_keys(store_url)
    parts = attend_batches(store_url, range(len(window_batches(RunStore.open(store_url, mode="r")))))
    return {**timings, **parts}


def _batch_slice(ids: Sequence[int]) -> slice:
    """The rows of the window arrays that one encode batch (consecutive ids) owns."""
    return slice(ids[0], ids[-1] + 1)


def _attend_each_window(source: StoreWindows, local: np.ndarray, offsets: torch.Tensor, cfg: GLAConfig,
                        store: RunStore, device: torch.device) -> torch.Tensor:
    """Attention inside each of the ``local`` windows (no key-value extension).

    Query smoothing averages over the tokens at the same place in overlapping windows, so those
    are read too (as context) and only the batch's own rows are kept.
    """
    wanted = [int(i) for i in local]
    context = wanted
    if cfg.smoothing:
        grid, rows = store.grid, source.rows
        near = np.array(sorted({int(w) for i in wanted for w in grid.windows_intersecting(*grid.window(int(rows[i])))}))
        pos = np.minimum(np.searchsorted(rows, near), len(rows) - 1)
        context = sorted(set(pos[rows[pos] == near].tolist()) | set(wanted))  # the valid ones
    off = offsets[context]
    out = attend(source.keys(context).to(device), source.values(context).to(device), config=cfg,
                 offsets=(off - off.amin(dim=0)).to(device), grid=store.token_grid)
    position = {c: k for k, c in enumerate(context)}
    return out[torch.tensor([position[i] for i in wanted], device=out.device)]


def class_probabilities(pixel_logits: torch.Tensor, classes: ClassList, logit_scale: float) -> torch.Tensor:
    """Class probabilities ``(C, h, w)`` from per-pixel prompt logits ``(P, h, w)``.

    Softmax over all prompts of ``logit_scale * logits``; a class's probability is the maximum over
    its synonyms (0 for a background class without prompts) (method.md section 4, step 3).
    """
    probs = torch.softmax(logit_scale * pixel_logits, dim=0)
    class_probs = torch.zeros((len(classes), *probs.shape[1:]), dtype=probs.dtype)
    owner = torch.tensor(classes.prompt_class, dtype=torch.long)
    for c in range(len(classes)):
        members = probs[owner == c]
        if len(members):
            class_probs[c] = members.amax(dim=0)
    return class_probs


def labels_from_probabilities(class_probs: torch.Tensor, classes: ClassList) -> torch.Tensor:
    """Class ids ``(h, w)`` uint8: argmax, and the background class where the top probability is
    below the threshold (method.md section 4, step 4)."""
    top, label = class_probs.max(dim=0)
    if classes.background is not None and classes.prob_threshold > 0:
        label[top < classes.prob_threshold] = classes.background
    return label.to(torch.uint8)


def _working_logits(store: RunStore, box: tuple[int, int, int, int], text: torch.Tensor,
                    valid_windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt logits ``(P, h, w)`` and window counts ``(h, w)`` of working pixels ``box``.

    Each covering window's token logits are bilinearly resized to its canvas (align_corners=False)
    and cut back to the window (the canvas padding dropped), summed, and divided by the number of
    windows covering each pixel (method.md section 4, step 2).
    """
    y1, x1, y2, x2 = box
    grid, (rows, cols) = store.grid, store.token_grid
    canvas = grid.canvas
    P = text.shape[0]
    acc = torch.zeros((P, y2 - y1, x2 - x1), dtype=torch.float32)
    count = torch.zeros((y2 - y1, x2 - x1), dtype=torch.float32)
    ids = [int(i) for i in grid.windows_intersecting(y1, x1, y2, x2) if valid_windows[i]]
    if ids and P:
        feats = torch.from_numpy(store.read_rows("features", ids))
        token_logits = feats @ text.T  # (k, N, P): cosine, both sides unit length
        for k, wid in enumerate(ids):
            wy1, wx1, wy2, wx2 = grid.window(wid)
            up = F.interpolate(token_logits[k].T.reshape(1, P, rows, cols), size=(canvas.height, canvas.width),
                               mode="bilinear", align_corners=False)[0]
            up = up[:, canvas.top:canvas.top + wy2 - wy1, canvas.left:canvas.left + wx2 - wx1]
            oy1, ox1, oy2, ox2 = max(y1, wy1), max(x1, wx1), min(y2, wy2), min(x2, wx2)
            acc[:, oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1] += up[:, oy1 - wy1:oy2 - wy1, ox1 - wx1:ox2 - wx1]
            count[oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1] += 1
    return acc / count.clamp(min=1), count


def _working_region(block: tuple[int, int, int, int], scale: tuple[float, float],
                    work_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The working pixels that bilinear resampling onto file pixels ``block`` reads."""
    y1, x1, y2, x2 = block
    (fy, fx), (hw, ww) = scale, work_shape
    wy1 = min(max(math.floor((y1 + 0.5) / fy - 0.5), 0), hw - 1)
    wx1 = min(max(math.floor((x1 + 0.5) / fx - 0.5), 0), ww - 1)
    wy2 = min(max(math.floor((y2 - 0.5) / fy - 0.5) + 2, wy1 + 1), hw)
    wx2 = min(max(math.floor((x2 - 0.5) / fx - 0.5) + 2, wx1 + 1), ww)
    return wy1, wx1, wy2, wx2


def _resample_to_file(arr: torch.Tensor, region: tuple[int, int, int, int], block: tuple[int, int, int, int],
                      scale: tuple[float, float]) -> torch.Tensor:
    """Bilinearly resample ``arr`` ``(C, h, w)`` (working pixels ``region``) onto file pixels ``block``.

    The same mapping as resizing the whole working canvas to the file's size with
    ``F.interpolate(mode="bilinear", align_corners=False)``: file pixel centre ``r + 0.5`` samples
    working coordinate ``(r + 0.5) / scale - 0.5``, clamped at the edges.
    """
    wy1, wx1, wy2, wx2 = region
    y1, x1, y2, x2 = block
    (fy, fx), h, w = scale, wy2 - wy1, wx2 - wx1
    rows = (torch.arange(y1, y2, dtype=torch.float64) + 0.5) / fy - 0.5 - wy1
    cols = (torch.arange(x1, x2, dtype=torch.float64) + 0.5) / fx - 0.5 - wx1
    gy = ((2 * rows + 1) / h - 1).float()
    gx = ((2 * cols + 1) / w - 1).float()
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, bh, bw, (x, y))
    return F.grid_sample(arr[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def stitch_block(store_url: str, block_index: int) -> dict[str, float]:
    """Stitch one output block (file pixels) of the class raster from the windows that cover it.

    Logits are stitched on the working grid and, when the scene was resized, bilinearly resampled
    onto the file's grid; then class probabilities, labels and the background threshold.  Nodata
    pixels get class 255 (and probability 0).
    """
    store = RunStore.open(store_url)
    if bool(store.read("blocks/stitched", block_index)):
        return {}
    t0 = time.perf_counter()
    cfg, scene = store.config, store.scene
    block = store.blocks()[block_index]
    y1, x1, y2, x2 = block
    text = torch.from_numpy(store.read("text"))
    valid_windows = store.read("windows/valid")
    scale = scene.work_scale
    if scale == (1.0, 1.0):
        logits, count = _working_logits(store, block, text, valid_windows)
        covered = count > 0
    else:
        region = _working_region(block, scale, scene.work_shape)
        logits, count = _working_logits(store, region, text, valid_windows)
        cov = (count > 0).float()
        # Normalised resampling: pixels next to uncovered (nodata) working pixels use covered ones only.
        weight = _resample_to_file(cov[None], region, block, scale)[0]
        logits = _resample_to_file(logits * cov, region, block, scale) / weight.clamp(min=1e-6)
        covered = weight > 1e-6
    with SceneReader(scene) as reader:
        valid = torch.from_numpy(reader.read_valid(block)) & covered
    probs = class_probabilities(logits, cfg.classes, cfg.logit_scale)
    labels = labels_from_probabilities(probs, cfg.classes)
    labels[~valid] = NODATA_CLASS
    store.array("classes")[y1:y2, x1:x2] = labels.numpy()
    if cfg.save_probabilities:
        quantised = torch.round(probs * 255).to(torch.uint8)
        quantised[:, ~valid] = 0
        store.array("probabilities")[:, y1:y2, x1:x2] = quantised.numpy()
    store.array("blocks/stitched")[block_index] = True
    return {"stitch": time.perf_counter() - t0}


def output_paths(out_dir: str | os.PathLike[str], stem: str) -> dict[str, Path]:
    """Where a run's outputs go: the class COG, the GeoPackage, the probability COG (when asked
    for) and the metrics (with labels)."""
    out = Path(out_dir)
    return {"cog": out / f"{stem}.classes.tif", "gpkg": out / f"{stem}.gpkg",
            "probabilities": out / f"{stem}.probabilities.tif", "stac": out / f"{stem}.stac.json",
            "metrics": out / f"{stem}.metrics.json"}


def check_labels(labels_path: str, scene: Scene) -> None:
    """Raise :class:`SceneError` unless ``labels_path`` is a one-band raster the size of ``scene``."""
    with gdal_env():
        ds = open_raster(labels_path, what="label raster")
        with ds:
            if (ds.height, ds.width) != scene.georef.shape:
                raise SceneError(f"The label raster {labels_path} is {ds.width} x {ds.height} pixels but the scene "
                                 f"is {scene.georef.width} x {scene.georef.height}.")


def evaluate(store_url: str, labels_path: str, out_dir: str) -> dict[str, float]:
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
    path = output_paths(out_dir, store.scene.stem)["metrics"]
    with atomic_output(path) as scratch:
        scratch.result.write_text(json.dumps(report, indent=2, allow_nan=True))
    return {"evaluate": time.perf_counter() - t0, **{f"metric:{k}": v for k, v in metrics.items()}}


def write_outputs(store_url: str, out_dir: str) -> dict[str, float]:
    """Write the class COG and the styled GeoPackage from the stitched class raster."""
    store = RunStore.open(store_url)
    scene, cfg = store.scene, store.config
    paths = output_paths(out_dir, scene.stem)
    classes = store.array("classes")
    t0 = time.perf_counter()
    with gdal_env():  # geogla's GDAL settings (threads for the overviews) on whichever worker runs this
        write_class_cog(paths["cog"], classes, scene.georef, cfg.classes)
        if cfg.save_probabilities:
            write_float_cog(paths["probabilities"], store.array("probabilities"), scene.georef,
                            list(cfg.classes.names), tags={"GEOGLA_PROBABILITY_SCALE": "1/255"})
    t1 = time.perf_counter()
    # Streamed: polygons go to the GeoPackage chunk row by chunk row, never all in memory.
    polygons = iter_polygons(classes, scene.georef, cfg.classes, min_area=cfg.min_area, simplify=cfg.simplify)
    write_geopackage(paths["gpkg"], polygons, scene.georef, cfg.classes)
    with gdal_env(), open_raster(scene.path) as ds:
        acquired = tiff_datetime(ds.tags())
    properties = {"geogla:model": cfg.model, "geogla:weights": cfg.weights,
                  "geogla:attention": cfg.attention.to_json(),
                  "geogla:source": os.path.basename(scene.path)}
    item = build_stac_item(paths["stac"], item_id=scene.stem, cog_path=paths["cog"], gpkg_path=paths["gpkg"],
                           georef=scene.georef, class_list=cfg.classes, datetime=acquired, properties=properties,
                           probabilities_path=paths["probabilities"] if cfg.save_probabilities else None)
    write_stac_item(paths["stac"], item)
    return {"cog": t1 - t0, "vectorize": time.perf_counter() - t1}

"""The encode stage (windows through both encoders) and the text stage (prompt embeddings)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geogla.scene import SceneReader
from geogla.stages.common import batch_slice, model_for
from geogla.stages.result import SKIPPED, StageResult
from geogla.store import RunStore, quantize_keys


def encode_windows(store_url: str, window_ids: Sequence[int]) -> StageResult:
    """Encode one batch of windows: read them, run both encoders, store keys and values.

    Each window is encoded as its canvas (:class:`geogla.grid.Canvas`), padding and nodata pixels
    in the model's pad colour.  Windows that are entirely nodata are marked invalid and not
    encoded.  ``window_ids`` must be one whole batch of :func:`geogla.stages.window_batches`.
    """
    store = RunStore.open(store_url)
    ids = list(window_ids)
    sl = batch_slice(ids)
    if bool(np.all(store.read("windows/encoded", sl))):
        return SKIPPED
    t0 = time.perf_counter()
    boxes = store.grid.boxes(ids)
    with SceneReader(store.scene) as reader:
        pixels = [reader.read((int(y1), int(x1), int(y2), int(x2))) for y1, x1, y2, x2 in boxes]
    t_read = time.perf_counter() - t0
    valid = np.array([bool(v.any()) for _, v in pixels])
    model = model_for(store)
    n, n_values = store.tokens_per_window, math.prod(store.value_grid)
    key_dtype, value_dtype = store.array("keys").dtype, store.array("values").dtype
    keys = np.zeros((len(ids), n, model.key_dim), dtype=key_dtype)
    scales = np.zeros((len(ids), n), dtype=np.float32)
    values = np.zeros((len(ids), n_values, model.value_dim), dtype=value_dtype)
    t1 = time.perf_counter()
    if valid.any():
        canvas = store.grid.canvas
        images = torch.from_numpy(np.stack([canvas.place(rgb, ok, model.pad_colour)
                                            for (rgb, ok), good in zip(pixels, valid, strict=True) if good]))
        k, v = model.encode(images.to(model.device), values_on_clip_grid=True)
        keys[valid], scales[valid] = quantize_keys(to_store_dtype(k, np.dtype(np.float32), "keys"), key_dtype)
        values[valid] = to_store_dtype(v, value_dtype, "values")
    t_enc = time.perf_counter() - t1
    store.array("keys")[sl] = keys
    store.array("key_scale")[sl] = scales
    store.array("values")[sl] = values
    store.array("windows/valid")[sl] = valid
    store.array("windows/encoded")[sl] = True  # last: marks the batch done
    return StageResult({"read": t_read, "encode": t_enc})


def to_store_dtype(tensor: torch.Tensor, dtype: np.dtype[Any], what: str) -> np.ndarray:
    """``tensor`` as the store array's ``dtype``; values beyond its range are a model this store
    cannot hold, said plainly instead of stored as infinities."""
    out = tensor.float().cpu().numpy().astype(dtype)
    if not np.isfinite(out).all():
        raise RuntimeError(
            f"The model's {what} exceed the range of the run store's {dtype.name} "
            f"(largest magnitude {float(tensor.abs().max()):.3g})."
        )
    return out


def embed_text(store_url: str) -> StageResult:
    """Embed every prompt of the class list (80 templates each) into ``text``."""
    store = RunStore.open(store_url)
    if store.is_done("text"):
        return SKIPPED
    t0 = time.perf_counter()
    prompts = list(store.config.classes.prompts)
    if prompts:
        emb = model_for(store).embed_text(prompts)
        store.array("text")[:] = emb.float().cpu().numpy()
    store.mark_done("text")
    return StageResult({"text": time.perf_counter() - t0})

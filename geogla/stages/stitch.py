"""The stitch stage: one output block of the class raster from the windows that cover it."""

from __future__ import annotations

import time

import torch

from geogla.classes import NODATA_CLASS
from geogla.scene import SceneReader
from geogla.stages.result import SKIPPED, StageResult
from geogla.stitching import (
    Box,
    accumulate_windows,
    block_logits,
    class_probabilities,
    labels_from_probabilities,
)
from geogla.store import RunStore


def working_logits(store: RunStore, box: Box, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt logits ``(P, h, w)`` and window counts ``(h, w)`` of working pixels ``box``, from the
    features of the valid windows that overlap it (:func:`geogla.stitching.accumulate_windows`);
    only those windows' flags and features are read."""
    grid = store.grid
    overlapping = grid.windows_intersecting(*box)
    ids = overlapping[store.read_rows("windows/valid", overlapping)].tolist()
    if not ids or not len(text):
        return accumulate_windows(box, [], torch.zeros(0, 0, len(text)), store.token_grid, grid.canvas)
    token_logits = torch.from_numpy(store.read_rows("features", ids)).float() @ text.T  # cosines: unit length
    return accumulate_windows(box, [grid.window(i) for i in ids], token_logits, store.token_grid, grid.canvas)


def stitch_block(store_url: str, block_index: int) -> StageResult:
    """Stitch one output block (file pixels) of the class raster from the windows that cover it.

    Logits are stitched on the working grid and, when the scene was resized, bilinearly resampled
    onto the file's grid; then class probabilities, labels and the background threshold.  Nodata
    pixels get class 255 (and probability 0).
    """
    store = RunStore.open(store_url)
    if bool(store.read("blocks/stitched", block_index)):
        return SKIPPED
    t0 = time.perf_counter()
    cfg, scene = store.config, store.scene
    block = store.block(block_index)
    y1, x1, y2, x2 = block
    text = torch.from_numpy(store.read("text"))
    logits, covered = block_logits(lambda box: working_logits(store, box, text), block,
                                   scene.work_scale, scene.work_shape)
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
    return StageResult({"stitch": time.perf_counter() - t0})

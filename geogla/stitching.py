"""From window features to labels (docs/method.md, section 4): pure tensor functions shared by
``geogla run``'s stitch stage and ``geogla eval``.

Windows' token logits are resized to their canvas, cut back to the window and averaged where
windows overlap, on the *working* grid (:func:`accumulate_windows`); an output grid of another
size (the file's, a label's) is resampled from it block by block (:func:`block_logits`), equal to
one bilinear resize of the whole canvas.  Then class probabilities and labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.classes import ClassList
from geogla.grid import Canvas

Box = tuple[int, int, int, int]


def accumulate_windows(box: Box, windows: Sequence[Box], token_logits: Tensor, token_grid: tuple[int, int],
                       canvas: Canvas) -> tuple[Tensor, Tensor]:
    """Prompt logits ``(P, h, w)`` and window counts ``(h, w)`` of working pixels ``box``.

    ``windows`` are the boxes of the windows overlapping ``box`` and ``token_logits``
    ``(len(windows), N, P)`` their tokens' logits on ``token_grid``.  Each window's logits are
    bilinearly resized to its canvas (align_corners=False) and cut back to the window (the canvas
    padding dropped), summed, and divided by the number of windows covering each pixel.
    """
    y1, x1, y2, x2 = box
    rows, cols = token_grid
    n_prompts = token_logits.shape[-1]
    acc = torch.zeros((n_prompts, y2 - y1, x2 - x1), dtype=torch.float32)
    count = torch.zeros((y2 - y1, x2 - x1), dtype=torch.float32)
    for k, (wy1, wx1, wy2, wx2) in enumerate(windows):
        up = F.interpolate(
            token_logits[k].T.reshape(1, n_prompts, rows, cols),
            size=(canvas.height, canvas.width),
            mode="bilinear",
            align_corners=False,
        )[0]
        up = up[:, canvas.top:canvas.top + wy2 - wy1, canvas.left:canvas.left + wx2 - wx1]
        oy1, ox1, oy2, ox2 = max(y1, wy1), max(x1, wx1), min(y2, wy2), min(x2, wx2)
        acc[:, oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1] += up[:, oy1 - wy1:oy2 - wy1, ox1 - wx1:ox2 - wx1]
        count[oy1 - y1:oy2 - y1, ox1 - x1:ox2 - x1] += 1
    return acc / count.clamp(min=1), count


def working_region(block: Box, scale: tuple[float, float], work_shape: tuple[int, int]) -> Box:
    """The working pixels that bilinear resampling onto output pixels ``block`` reads; ``scale``
    is output pixels per working pixel ``(rows, cols)``."""
    y1, x1, y2, x2 = block
    (fy, fx), (hw, ww) = scale, work_shape
    wy1 = min(max(math.floor((y1 + 0.5) / fy - 0.5), 0), hw - 1)
    wx1 = min(max(math.floor((x1 + 0.5) / fx - 0.5), 0), ww - 1)
    wy2 = min(max(math.floor((y2 - 0.5) / fy - 0.5) + 2, wy1 + 1), hw)
    wx2 = min(max(math.floor((x2 - 0.5) / fx - 0.5) + 2, wx1 + 1), ww)
    return wy1, wx1, wy2, wx2


def resample_block(arr: Tensor, region: Box, block: Box, scale: tuple[float, float]) -> Tensor:
    """Bilinearly resample ``arr`` ``(C, h, w)`` (working pixels ``region``) onto output pixels ``block``.

    The same mapping as resizing the whole working canvas to the output size with
    ``F.interpolate(mode="bilinear", align_corners=False)``: output pixel centre ``r + 0.5`` samples
    working coordinate ``(r + 0.5) / scale - 0.5``, clamped at the edges.
    """
    wy1, wx1, wy2, wx2 = region
    y1, x1, y2, x2 = block
    (fy, fx), h, w = scale, wy2 - wy1, wx2 - wx1
    rows = (torch.arange(y1, y2, dtype=torch.float64) + 0.5) / fy - 0.5 - wy1
    cols = (torch.arange(x1, x2, dtype=torch.float64) + 0.5) / fx - 0.5 - wx1
    gy = ((2 * rows + 1) / h - 1).float()
    gx = ((2 * cols + 1) / w - 1).float()
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].to(
        arr.device
    )  # (1, bh, bw, (x, y))
    return F.grid_sample(arr[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def block_logits(working: Callable[[Box], tuple[Tensor, Tensor]], block: Box, scale: tuple[float, float],
                 work_shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Prompt logits ``(P, h, w)`` of output pixels ``block`` and where any window covers them.

    ``working(box)`` gives the logits and window counts of working pixels ``box``
    (:func:`accumulate_windows`).  When the output grid is the working grid they are the block's;
    else they are resampled bilinearly (:func:`resample_block`), normalised so that working pixels
    no window covers (nodata) do not bleed into their neighbours.
    """
    if scale == (1.0, 1.0):
        logits, count = working(block)
        return logits, count > 0
    region = working_region(block, scale, work_shape)
    logits, count = working(region)
    cov = (count > 0).float()
    weight = resample_block(cov[None], region, block, scale)[0]
    logits = resample_block(logits * cov, region, block, scale) / weight.clamp(min=1e-6)
    return logits, weight > 1e-6


def class_probabilities(pixel_logits: Tensor, classes: ClassList, logit_scale: float) -> Tensor:
    """Class probabilities ``(C, h, w)`` from per-pixel prompt logits ``(P, h, w)``.

    Softmax over all prompts of ``logit_scale * logits``; a class's probability is the maximum over
    its synonyms (0 for a background class without prompts) (docs/method.md, section 4, step 3).
    """
    probs = torch.softmax(logit_scale * pixel_logits, dim=0)
    class_probs = torch.zeros((len(classes), *probs.shape[1:]), dtype=probs.dtype, device=probs.device)
    owner = torch.tensor(classes.prompt_class, dtype=torch.long, device=probs.device)
    for c in range(len(classes)):
        members = probs[owner == c]
        if len(members):
            class_probs[c] = members.amax(dim=0)
    return class_probs


def labels_from_probabilities(class_probs: Tensor, classes: ClassList) -> Tensor:
    """Class ids ``(h, w)`` uint8: argmax, and the background class where the top probability is
    below the threshold (docs/method.md, section 4, step 4)."""
    top, label = class_probs.max(dim=0)
    if classes.background is not None and classes.prob_threshold > 0:
        label[top < classes.prob_threshold] = classes.background
    return label.to(torch.uint8)

"""Comparison figures of ``geogla eval``: image, ground truth and predictions side by side.

One PNG per image: the image the models saw, the ground truth and each prediction in the
dataset's colours, with the window edges of the image's own sliding-window grid drawn on the
predictions (dashed black and white, visible on any colour), so that disagreements at window
borders, the artifacts GLA removes, can be seen.  Unscored pixels are hatched grey.  A legend of
the class colours closes the figure.  Drawn with Pillow only (matplotlib is not a dependency).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from geogla.classes import NODATA_CLASS

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
WARNING = (190, 0, 0)
HATCH = ((95, 95, 95), (150, 150, 150))  #: the two greys of unscored pixels
MARGIN = 12
GAP = 10


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class Panel:
    """One panel: a title, and either an RGB image ``(H, W, 3)`` uint8 or a class-id map
    ``(H, W)`` uint8 (255 = unscored); ``edges`` draws the window edges on it."""

    title: str
    data: np.ndarray
    edges: bool = False


def colourise(labels: np.ndarray, colours: Sequence[Sequence[int]]) -> np.ndarray:
    """RGB ``(H, W, 3)`` of a class-id map; ids without a colour and 255 are hatched grey."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = HATCH[0]
    for i, c in enumerate(colours[:NODATA_CLASS]):
        lut[i] = c
    rgb = lut[labels]
    unscored = (labels == NODATA_CLASS) | (labels >= len(colours))
    if unscored.any():
        yy, xx = np.nonzero(unscored)
        stripe = ((yy + xx) // 4) % 2 == 1
        rgb[yy[stripe], xx[stripe]] = HATCH[1]
    return cast(np.ndarray, rgb)


def _draw_edges(draw: ImageDraw.ImageDraw, x0: int, y0: int, w: int, h: int, rows: Sequence[float],
                cols: Sequence[float], dash: int = 4) -> None:
    """Dashed black/white lines at window edges (panel coordinates), so they show on any colour."""
    for r in rows:
        y = y0 + round(r)
        for s in range(0, w, dash):
            draw.line(
                [(x0 + s, y), (x0 + min(s + dash, w) - 1, y)],
                fill=(0, 0, 0) if (s // dash) % 2 else (255, 255, 255),
            )
    for c in cols:
        x = x0 + round(c)
        for s in range(0, h, dash):
            draw.line(
                [(x, y0 + s), (x, y0 + min(s + dash, h) - 1)],
                fill=(0, 0, 0) if (s // dash) % 2 else (255, 255, 255),
            )


def _text_width(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def comparison_figure(panels: Sequence[Panel], class_names: Sequence[str], colours: Sequence[Sequence[int]],
                      edges: tuple[Sequence[float], Sequence[float]], title: str,
                      warning: str | None = None, ignore_label: str = "not scored") -> Image.Image:
    """The figure as a Pillow image.

    ``panels`` are drawn left to right (all the same size); ``edges`` ``(rows, cols)`` are window
    edges in panel pixels, drawn on the panels whose ``edges`` is set.  ``title`` heads the
    figure, ``warning`` (e.g. random weights) follows it in red, and a legend of ``class_names``
    in ``colours`` (plus the hatch of unscored pixels) closes it.
    """
    if not panels:
        raise ValueError("a figure needs at least one panel")
    h, w = panels[0].data.shape[:2]
    big, small = _font(18), _font(15)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 2 * MARGIN + len(panels) * w + (len(panels) - 1) * GAP
    # Legend entries laid out in rows that fit the width.
    entries = [(str(n), tuple(colours[i])) for i, n in enumerate(class_names)] + [(ignore_label, None)]
    legend_rows: list[list[tuple[str, tuple[int, ...] | None, int]]] = [[]]
    x = MARGIN
    for name, colour in entries:
        item = 18 + 6 + _text_width(scratch, name, small) + 18
        if x + item > width - MARGIN and legend_rows[-1]:
            legend_rows.append([])
            x = MARGIN
        legend_rows[-1].append((name, colour, x))
        x += item
    title_h = 26 + (22 if warning else 0)
    panel_title_h = 24
    height = MARGIN + title_h + panel_title_h + h + GAP + len(legend_rows) * 24 + MARGIN
    fig = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(fig)
    draw.text((MARGIN, MARGIN), title, fill=TEXT, font=big)
    if warning:
        draw.text((MARGIN, MARGIN + 26), warning, fill=WARNING, font=small)
    top = MARGIN + title_h + panel_title_h
    for k, panel in enumerate(panels):
        x0 = MARGIN + k * (w + GAP)
        draw.text((x0, top - panel_title_h + 2), panel.title, fill=TEXT, font=small)
        rgb = panel.data if panel.data.ndim == 3 else colourise(panel.data, colours)
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"panel {panel.title!r} is {rgb.shape[:2]}, not {(h, w)}")
        fig.paste(Image.fromarray(np.ascontiguousarray(rgb[..., :3])), (x0, top))
        draw.rectangle(
            [x0 - 1, top - 1, x0 + w, top + h], outline=(120, 120, 120)
        )  # white classes need a frame
        if panel.edges:
            _draw_edges(draw, x0, top, w, h, edges[0], edges[1])
    y = top + h + GAP
    for row in legend_rows:
        for name, colour, x in row:
            if colour is None:
                swatch = colourise(np.full((16, 16), NODATA_CLASS, dtype=np.uint8), [])
                fig.paste(Image.fromarray(swatch), (x, y + 2))
            else:
                draw.rectangle([x, y + 2, x + 15, y + 17], fill=tuple(colour), outline=(60, 60, 60))
            draw.text((x + 22, y + 2), name, fill=TEXT, font=small)
        y += 24
    return fig


def save_figure(path: str | os.PathLike[str], figure: Image.Image) -> None:
    """Write ``figure`` as a PNG, creating the folder."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    figure.save(path, format="PNG", optimize=True)


def nearest_resize(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A class-id map resized to ``shape`` by nearest neighbour (pixel centres)."""
    h, w = labels.shape
    if (h, w) == shape:
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return cast(np.ndarray, labels[rows[:, None], cols[None, :]])

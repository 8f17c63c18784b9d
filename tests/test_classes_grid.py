"""The class-list syntax and the sliding-window rule (docs/method.md section 1)."""

from __future__ import annotations

import numpy as np
import pytest

from geogla.classes import parse_classes
from geogla.errors import ClassSpecError
from geogla.grid import WindowGrid


def test_synonyms_and_prompts() -> None:
    cl = parse_classes("building, tree|forest ,road")
    assert cl.names == ("building", "tree", "road")
    assert cl.prompts == ("building", "tree", "forest", "road")
    assert cl.prompt_class == (0, 1, 1, 2)
    assert cl.background is None


def test_background_is_a_listed_class_or_appended() -> None:
    assert (
        parse_classes("road,clutter|background", background="background", prob_threshold=0.1).background == 1
    )
    cl = parse_classes("road,tree", background="other", prob_threshold=0.3)
    assert cl.names == ("road", "tree", "other") and cl.synonyms[2] == () and cl.background == 2
    assert parse_classes("road", prob_threshold=0.2).names == ("road", "background")


@pytest.mark.parametrize("spec, message", [("", "empty"), (" ", "empty"), ("a,,b", "empty class name"),
                                           ("a|,b", "empty class name"), ("a,b|A", "given twice")])
def test_bad_class_lists(spec: str, message: str) -> None:
    with pytest.raises(ClassSpecError, match=message):
        parse_classes(spec)


def test_classlist_json_round_trip() -> None:
    cl = parse_classes("a|b,c", background="c", prob_threshold=0.4)
    assert type(cl).from_json(cl.to_json()) == cl


def test_window_rule_matches_the_spec() -> None:
    # 448 x 448 at crop 224 / stride 112: rows = (448 - 224 + 111) // 112 + 1 = 3.
    g = WindowGrid(448, 448, 224, 112)
    assert (g.rows, g.cols, len(g)) == (3, 3, 9)
    assert g.window(4) == (112, 112, 336, 336)
    # 500 wide: cols = (500 - 224 + 111) // 112 + 1 = 4; the last column is shifted back to end at 500.
    g = WindowGrid(224, 500, 224, 112)
    assert [g.window(k) for k in range(len(g))] == [(0, 0, 224, 224), (0, 112, 224, 336), (0, 224, 224, 448),
                                                    (0, 276, 224, 500)]


def test_small_image_is_one_window_of_its_own_size() -> None:
    # The reference cuts img[y1:y2, x1:x2] with y2 = min(y1 + crop, h): a window is never larger
    # than the image.
    g = WindowGrid(100, 150, 224, 112)
    assert len(g) == 1 and g.window(0) == (0, 0, 100, 150) and g.window_shape == (100, 150)
    assert g.edges()[0].size == 0 and g.edges()[1].size == 0
    g = WindowGrid(150, 500, 224, 112)
    assert [g.window(k) for k in range(len(g))] == [(0, 0, 150, 224), (0, 112, 150, 336), (0, 224, 150, 448),
                                                    (0, 276, 150, 500)]


def _reference_padsize(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """ProxyCLIP's compute_padsize (proxyclip_segmentor.py), rewritten: (left, right, top, bottom)."""
    lr = (multiple - w % multiple) if w % multiple else 0
    tb = (multiple - h % multiple) if h % multiple else 0
    return lr // 2, lr - lr // 2, tb // 2, tb - tb // 2


@pytest.mark.parametrize(
    "height, width, crop",
    [
        (448, 448, 224),
        (150, 500, 224),
        (100, 150, 224),
        (57, 1000, 224),
        (300, 300, 200),
        (700, 90, 336),
        (56, 56, 224),
    ],
)
def test_canvas_pads_centred_to_the_multiple_like_the_reference(height: int, width: int, crop: int) -> None:
    g = WindowGrid(height, width, crop, crop // 2, pad_to=56)
    h, w = g.window_shape
    left, right, top, bottom = _reference_padsize(h, w, 56)
    c = g.canvas
    assert (c.height, c.width, c.top, c.left) == (h + top + bottom, w + left + right, top, left)
    assert c.height % 56 == 0 and c.width % 56 == 0
    assert g.token_grid(8) == (c.height // 8, c.width // 8)


def test_canvas_fills_padding_and_nodata_with_the_fill_colour() -> None:
    g = WindowGrid(20, 30, 224, 112, pad_to=56)
    c = g.canvas
    assert (c.height, c.width, c.top, c.left) == (56, 56, 18, 13)
    pixels = np.random.default_rng(0).random((3, 20, 30), dtype=np.float32)
    valid = np.ones((20, 30), dtype=bool)
    valid[5, 7] = False
    canvas = c.place(pixels, valid, (0.25, 0.5, 0.75))
    inside = canvas[:, 18:38, 13:43]
    assert np.array_equal(inside[:, valid], pixels[:, valid])
    assert inside[:, 5, 7].tolist() == [0.25, 0.5, 0.75]
    outside = np.ones((56, 56), dtype=bool)
    outside[18:38, 13:43] = False
    assert np.array_equal(canvas[:, outside], np.broadcast_to(np.array([[0.25], [0.5], [0.75]], np.float32),
                                                              (3, int(outside.sum()))))


def test_window_lookup_and_offsets() -> None:
    g = WindowGrid(448, 448, 224, 112)
    assert list(g.windows_intersecting(0, 0, 10, 10)) == [0]
    assert sorted(g.windows_intersecting(200, 200, 230, 230)) == list(range(9))
    offsets = g.token_offsets(8)
    assert offsets[4].tolist() == [14, 14] and offsets[8].tolist() == [28, 28]
    rows, cols = g.edges()
    assert rows.tolist() == [112, 224, 336] and np.array_equal(rows, cols)

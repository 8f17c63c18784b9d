"""The class-list syntax and the sliding-window rule (method.md section 1)."""

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
    assert parse_classes("road,clutter|background", background="background", prob_threshold=0.1).background == 1
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


def test_small_image_is_one_padded_window() -> None:
    g = WindowGrid(100, 150, 224, 112)
    assert len(g) == 1 and g.window(0) == (0, 0, 224, 224)
    assert g.edges()[0].size == 0 and g.edges()[1].size == 0


def test_window_lookup_and_offsets() -> None:
    g = WindowGrid(448, 448, 224, 112)
    assert list(g.windows_intersecting(0, 0, 10, 10)) == [0]
    assert sorted(g.windows_intersecting(200, 200, 230, 230)) == list(range(9))
    offsets = g.token_offsets(28)
    assert offsets[4].tolist() == [14, 14] and offsets[8].tolist() == [28, 28]
    rows, cols = g.edges()
    assert rows.tolist() == [112, 224, 336] and np.array_equal(rows, cols)

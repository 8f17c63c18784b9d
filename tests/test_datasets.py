"""Benchmark presets, label legends and the folder layouts of ``geogla eval`` on tiny synthetic folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image

from geogla.datasets import (
    DatasetError,
    LabelLegend,
    Sample,
    expand_tiles,
    find_samples,
    get_spec,
    load_labels,
    load_presets,
    preset_names,
    spec_from_entry,
)
from geogla.datasets.layouts import tile_starts
from geogla.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

# -- helpers --------------------------------------------------------------------------------------


def rgb_image(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    """A small random RGB image (PNG, JPEG or TIFF by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if path.suffix.lower() in (".tif", ".tiff"):
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8") as dst:
            dst.write(data.transpose(2, 0, 1))
    else:
        Image.fromarray(data).save(path)
    return path


def id_mask(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        with rasterio.open(path, "w", driver="GTiff", width=ids.shape[1], height=ids.shape[0], count=1,
                           dtype="uint8") as dst:
            dst.write(ids.astype(np.uint8)[None])
    else:
        Image.fromarray(ids.astype(np.uint8), mode="L").save(path)
    return path


def colour_mask(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)
    return path


def names(samples: list[Sample]) -> list[str]:
    return [s.name for s in samples]


# -- presets ----------------------------------------------------------------------------------------


def test_every_preset_loads_and_keeps_the_run_keys() -> None:
    raw = load_presets()
    for name in ("vaihingen", "potsdam", "uavid", "vdd", "udd5", "loveda", "openearthmap"):
        assert name in preset_names()
        entry = raw[name]
        # The keys `geogla run --dataset` reads are still there, with the protocol of docs/method.md, 6.
        assert {"source", "classes", "background", "prob_threshold", "protocol"} <= set(entry)
        assert entry["protocol"]["resize_long_side"] == 448
        spec = get_spec(name)
        assert len(spec.label_names) == len(spec.classes.split(","))
        assert spec.source
        cl = spec.class_list()
        assert cl.background is not None and cl.names[cl.background] == entry["background"]
        assert len(cl) == len(spec.label_names)  # the background is one of the listed classes
    assert get_spec("vaihingen").published == {
        "source": "GLA-CLIP paper, appendix J, Table 9 (CLIP ViT-B/16, training-free)",
        "miou": {"proxyclip": 30.6, "gla": 31.9},
    }
    assert get_spec("uavid").tile == (1080, 1280)


def test_protocol_values_follow_the_spec() -> None:
    expected = {"vaihingen": (0.1, "clutter"), "potsdam": (0.1, "clutter"), "uavid": (0.3, "background"),
                "vdd": (0.3, "background"), "udd5": (0.4, "background"), "loveda": (0.3, "background"),
                "openearthmap": (0.1, "background")}
    for name, (threshold, bg) in expected.items():
        spec = get_spec(name)
        assert (spec.prob_threshold, spec.background) == (threshold, bg)
        assert (spec.resize_long_side, spec.crop, spec.stride, spec.logit_scale) == (448, 224, 112, 40.0)


def test_overrides_and_their_checks() -> None:
    spec = get_spec("vaihingen")
    o = spec.with_overrides(
        classes="road,house,grass,tree,car,clutter",
        resize_long_side=0,
        crop=112,
        stride=56,
        prob_threshold=0.0,
        logit_scale=50,
    )
    assert o.resize_long_side is None and (o.crop, o.stride, o.logit_scale) == (112, 56, 50)
    assert o.class_list().names[1] == "house" and o.class_list().prob_threshold == 0.0
    assert o.label_names == spec.label_names  # labels still map by position
    with pytest.raises(ConfigError, match="must list 6 classes"):
        spec.with_overrides(classes="road,house")
    with pytest.raises(ConfigError, match="Unknown dataset"):
        get_spec("nope")
    with pytest.raises(ConfigError, match="needs --legend"):
        get_spec("folder")


def test_malformed_entries_are_refused() -> None:
    good = {"layout": "folder", "labels": {"ids": {1: "a", 2: "b"}}}
    assert spec_from_entry("x", good).label_names == ("a", "b")
    with pytest.raises(ConfigError, match="unknown key"):
        spec_from_entry("x", {**good, "clases": "a,b"})
    with pytest.raises(ConfigError, match="not one of"):
        spec_from_entry("x", {**good, "classes": "a,c"})
    with pytest.raises(ConfigError, match="both a class and ignored"):
        spec_from_entry("x", {"labels": {"ids": {1: "a"}, "ignore_ids": [1]}})
    with pytest.raises(ConfigError, match="not a colour"):
        spec_from_entry("x", {"labels": {"colours": {"#12345": "a"}}})
    with pytest.raises(ConfigError, match="neither ids nor colours"):
        spec_from_entry("x", {"labels": {"ignore_ids": [0]}})


# -- legends ----------------------------------------------------------------------------------------


def test_id_legend_maps_ignores_and_counts_unknown_values() -> None:
    legend = LabelLegend.from_yaml({"ids": {1: "a", 2: "b", 7: "b"}, "ignore_ids": [0]}, ["a", "b"], "t")
    mask = np.array([[0, 1, 2], [7, 9, 1]], dtype=np.uint8)
    labels, stats = legend.decode(mask)
    np.testing.assert_array_equal(labels, [[255, 0, 1], [1, 255, 0]])
    assert (stats.labelled, stats.ignored, stats.unmatched) == (4, 1, 1)
    assert stats.examples == {"9"}


def test_colour_legend_and_grey_masks_saved_as_rgb() -> None:
    legend = LabelLegend.from_yaml(
        {"colours": {"#FF0000": "a", "0,0,255": "b"}, "ignore_colours": [[0, 0, 0]]}, ["a", "b"], "t"
    )
    rgb = np.zeros((3, 2, 2), dtype=np.uint8)
    rgb[0, 0, 0] = 255  # red
    rgb[2, 0, 1] = 255  # blue
    rgb[:, 1, 1] = 7  # unknown grey
    labels, stats = legend.decode(rgb)
    np.testing.assert_array_equal(labels, [[0, 1], [255, 255]])
    assert (stats.labelled, stats.ignored, stats.unmatched) == (2, 1, 1)
    assert stats.examples == {"#070707"}
    ids_only = LabelLegend.from_yaml({"ids": {1: "a"}}, ["a"], "t")
    grey = np.stack([np.array([[1, 0]], dtype=np.uint8)] * 3)
    np.testing.assert_array_equal(ids_only.decode(grey)[0], [[0, 255]])
    with pytest.raises(ConfigError, match="RGB colour images"):
        ids_only.decode(rgb)
    with pytest.raises(ConfigError, match="single-band id"):
        legend.decode(np.zeros((2, 2), dtype=np.uint8))


# -- layouts ----------------------------------------------------------------------------------------


def test_isprs_mmseg_and_flat_layouts(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for k in range(2):
            rgb_image(tmp_path / "mm" / "img_dir" / split / f"area{k}_0_0_512_512.png")
            id_mask(tmp_path / "mm" / "ann_dir" / split / f"area{k}_0_0_512_512.png", np.ones((24, 32)))
    samples = find_samples("isprs", tmp_path / "mm", "val")
    assert names(samples) == ["area0_0_0_512_512", "area1_0_0_512_512"]
    assert all("val" in str(s.image) and "ann_dir" in str(s.mask) for s in samples)
    rgb_image(tmp_path / "flat" / "images" / "a.png")
    id_mask(tmp_path / "flat" / "masks" / "a.png", np.ones((24, 32)))
    assert names(find_samples("isprs", tmp_path / "flat", "val")) == ["a"]
    labels, _ = load_labels(samples[0], get_spec("vaihingen").legend)
    assert labels.shape == (24, 32) and np.all(labels == 0)  # id 1 -> impervious surface


def test_loveda_official_layout_has_both_domains(tmp_path: Path) -> None:
    for domain, stem in (("Urban", "3514"), ("Rural", "2522")):
        rgb_image(tmp_path / "Val" / domain / "images_png" / f"{stem}.png")
        id_mask(
            tmp_path / "Val" / domain / "masks_png" / f"{stem}.png", np.arange(24 * 32).reshape(24, 32) % 8
        )
    rgb_image(tmp_path / "Test" / "Urban" / "images_png" / "9.png")
    samples = find_samples("loveda", tmp_path, "val")
    assert names(samples) == ["Rural/2522", "Urban/3514"]
    labels, stats = load_labels(samples[0], get_spec("loveda").legend)
    assert labels[0, 0] == 255 and labels[0, 1] == 0 and labels[0, 7] == 6  # 0 = no-data, 1..7 -> 0..6
    assert stats.unmatched == 0
    with pytest.raises(DatasetError, match="no masks_png"):
        find_samples("loveda", tmp_path, "test")


def test_uavid_official_colour_labels_merge_cars_and_frames_are_tiled(tmp_path: Path) -> None:
    h, w = 60, 100
    palette = {"#000000": 0, "#800000": 1, "#804080": 2, "#C000C0": 3, "#400080": 3, "#008000": 4,
               "#808000": 5, "#404000": 6}
    colours = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in palette]
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    for k, col in enumerate(colours):
        rgb[:, k * 10:(k + 1) * 10] = col
    for seq in ("seq21", "seq22"):
        rgb_image(tmp_path / "uavid_test" / seq / "Images" / "000000.png", h, w)
        colour_mask(tmp_path / "uavid_test" / seq / "Labels" / "000000.png", rgb)
    samples = find_samples("uavid", tmp_path, "test")
    assert names(samples) == ["seq21/000000", "seq22/000000"]
    labels, stats = load_labels(samples[0], get_spec("uavid").legend)
    assert [int(labels[0, k * 10]) for k in range(8)] == list(
        palette.values()
    )  # static and moving car -> car
    assert stats.unmatched == 0
    tiles = expand_tiles(samples, (40, 48))
    # rows 0 and 20 (shifted back), columns 0, 48, 52 (shifted back)
    assert names(tiles)[:3] == [
        "seq21/000000_0_40_0_48",
        "seq21/000000_0_40_48_96",
        "seq21/000000_0_40_52_100",
    ]
    assert len(tiles) == 12
    tile_labels, _ = load_labels(tiles[2], get_spec("uavid").legend)
    np.testing.assert_array_equal(tile_labels, labels[0:40, 52:100])


def test_tile_starts_follow_segearth_converter() -> None:
    assert tile_starts(3840, 1280) == [0, 1280, 2560]
    assert tile_starts(4096, 1280) == [0, 1280, 2560, 2816]
    assert tile_starts(2160, 1080) == [0, 1080]
    assert tile_starts(900, 1080) == [0]


def test_vdd_and_udd5_src_gt_layouts(tmp_path: Path) -> None:
    ids = np.arange(24 * 32).reshape(24, 32) % 7
    for split in ("train", "val", "test"):
        rgb_image(tmp_path / "VDD" / split / "src" / f"DJI_00{split}.JPG")
        id_mask(tmp_path / "VDD" / split / "gt" / f"DJI_00{split}.png", ids)
    samples = find_samples("vdd", tmp_path / "VDD", "test")
    assert names(samples) == ["DJI_00test"]
    labels, _ = load_labels(samples[0], get_spec("vdd").legend)
    np.testing.assert_array_equal(labels, ids)  # VDD ids are the class ids
    assert names(find_samples("vdd", tmp_path, "val")) == ["DJI_00val"]  # root above VDD/
    udd = tmp_path / "UDD" / "UDD5" / "val"
    rgb_image(udd / "src" / "DJI_0101.JPG")
    id_mask(udd / "gt" / "DJI_0101.png", ids % 5)
    samples = find_samples("udd", tmp_path, "val")
    assert names(samples) == ["DJI_0101"]
    labels, stats = load_labels(samples[0], get_spec("udd5").legend)
    np.testing.assert_array_equal(labels, ids % 5)
    assert stats.unmatched == 0


def test_openearthmap_region_folders_and_split_list(tmp_path: Path) -> None:
    for region, n in (("aachen", 3), ("koeln", 2)):
        for k in range(1, n + 1):
            rgb_image(tmp_path / region / "images" / f"{region}_{k}.tif")
            id_mask(tmp_path / region / "labels" / f"{region}_{k}.tif", np.full((24, 32), k))
    (tmp_path / "val.txt").write_text("koeln_2.tif\naachen_1.tif\n")
    (tmp_path / "train.txt").write_text("aachen_2.tif\nmissing_9.tif\n")
    samples = find_samples("openearthmap", tmp_path, "val")
    assert names(samples) == ["aachen/aachen_1", "koeln/koeln_2"]
    labels, _ = load_labels(samples[1], get_spec("openearthmap").legend)
    assert np.all(labels == 2)  # id 2 -> grass (rangeland); id 0 would be the scored background
    with pytest.raises(DatasetError, match="not under"):
        find_samples("openearthmap", tmp_path, "train")


def test_generic_folder_with_suffixes_and_subfolders(tmp_path: Path) -> None:
    rgb_image(tmp_path / "images" / "a.jpg")
    rgb_image(tmp_path / "images" / "zone2" / "b.png")
    colour_mask(tmp_path / "masks" / "a_mask.png", np.zeros((24, 32, 3)))
    id_mask(tmp_path / "masks" / "zone2" / "b.png", np.ones((24, 32)))
    assert names(find_samples("folder", tmp_path, "val")) == ["a", "zone2/b"]
    (tmp_path / "images" / "c.png").write_bytes((tmp_path / "images" / "a.jpg").read_bytes())
    with pytest.raises(DatasetError, match="have no mask"):
        find_samples("folder", tmp_path, "val")


def test_folder_legend_file_defines_classes(tmp_path: Path) -> None:
    legend = tmp_path / "legend.yaml"
    legend.write_text(yaml.safe_dump({"labels": {"colours": {"#3C1098": "building", "#6EC1E4": "road",
                                                             "#123456": "road"},
                                                 "ignore_colours": ["#9B9B9B"]},
                                      "protocol": {"resize_long_side": None}}, sort_keys=False))
    spec = get_spec("folder", legend)
    assert spec.label_names == ("building", "road") and spec.resize_long_side is None
    assert spec.class_list().colours == ((60, 16, 152), (110, 193, 228))  # the legend's first colours
    assert (spec.crop, spec.stride) == (224, 112)


def test_missing_root_and_empty_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        find_samples("isprs", tmp_path / "nope", "val")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DatasetError, match="No images"):
        find_samples("folder", tmp_path, "val")
    with pytest.raises(DatasetError, match="looked for"):
        find_samples("vdd", tmp_path / "images", "test")


def test_palette_masks_hold_colours_or_ids(tmp_path: Path) -> None:
    # A colour legend saved as a palette PNG (18 of the Dubai masks are): indices mean colours.
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    coloured = Image.fromarray(idx, mode="P")
    coloured.putpalette([60, 16, 152, 110, 193, 228, 155, 155, 155] + [0] * (253 * 3))
    coloured.save(tmp_path / "dubai.png")
    spec = get_spec("dubai_aerial")
    labels, stats = load_labels(Sample("d", tmp_path / "dubai.png", tmp_path / "dubai.png"), spec.legend)
    np.testing.assert_array_equal(labels, [[0, 2], [255, 2]])  # building, road, unlabelled grey
    assert stats.unmatched == 0
    # Ids saved as a palette PNG with a grey ramp (as mmseg-style converters write them): indices
    # are the ids, even though the UAVid legend also has colours.
    ids = Image.fromarray(np.array([[0, 3], [6, 7]], dtype=np.uint8), mode="P")
    ids.putpalette([v for i in range(256) for v in (i, i, i)])
    ids.save(tmp_path / "uavid.png")
    labels, stats = load_labels(
        Sample("u", tmp_path / "uavid.png", tmp_path / "uavid.png"), get_spec("uavid").legend
    )
    np.testing.assert_array_equal(labels, [[0, 3], [6, 3]])
    assert stats.unmatched == 0

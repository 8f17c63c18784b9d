"""``geogla eval``: stitching to the label size, scores by hand, and runs on the real samples."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from geogla import stages, stitching
from geogla.cli import main
from geogla.datasets import (
    DatasetError,
    Sample,
    expand_tiles,
    find_samples,
    get_spec,
    load_labels,
    spec_from_entry,
)
from geogla.gla import GLAConfig
from geogla.pipelines import evaluate
from geogla.pipelines.evaluate import EvalOptions, evaluate_dataset, write_report
from geogla.runconfig import RunConfig, attention_config
from geogla.scene import SceneReader, open_scene
from geogla.store import RunStore
from tests.conftest import structured_rgb

TINY = ["--model", "tiny", "--weights", "random"]
TINY_OPTIONS = EvalOptions(model="tiny", weights="random", device="cpu")

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore::geogla.models.weights.RandomWeightsWarning")]


def write_png(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path)
    return path


# -- stitching and resizing -------------------------------------------------------------------------


def test_working_image_is_the_resized_image_and_tiles_are_cut_first(tmp_path: Path) -> None:
    rgb = structured_rgb(300, 420).transpose(1, 2, 0)
    src = write_png(tmp_path / "img.png", np.ascontiguousarray(rgb))
    path, label_shape = evaluate.prepare_image(Sample("img", src, src), 448, tmp_path / "w.tif")
    assert label_shape == (300, 420)
    scene = open_scene(path)
    assert scene.georef.shape == (320, 448)  # long side 448, 300 * 448 / 420 = 320
    # OpenCV's INTER_LINEAR, which the reference's mmcv Resize calls
    expected = cv2.resize(rgb, (448, 320), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) / np.float32(
        255
    )
    with SceneReader(scene) as reader:  # the windows read the resized pixels, not a crop of the original
        got, valid = reader.read((96, 224, 320, 448))
    assert valid.all() and np.array_equal(got, expected[:, 96:320, 224:448])
    # A tile is cut from the original first, then resized; untouched images are used as they are.
    path, label_shape = evaluate.prepare_image(
        Sample("t", src, src, box=(100, 20, 300, 220)), None, tmp_path / "t.tif"
    )
    assert label_shape == (200, 200)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), rgb.transpose(2, 0, 1)[:, 100:300, 20:220])
    assert evaluate.prepare_image(Sample("img", src, src), None, tmp_path / "x.tif") == (str(src), (300, 420))


def _attended_store(tmp_path: Path, shape: tuple[int, int]) -> tuple[RunStore, RunConfig]:
    rgb = structured_rgb(*shape).transpose(1, 2, 0)
    src = write_png(tmp_path / "s.png", np.ascontiguousarray(rgb))
    scene = open_scene(src)
    spec = get_spec("vaihingen")
    config = RunConfig(classes=spec.class_list(), model="tiny", weights="random", device="cpu", block=128)
    model = stages.load_model("tiny", "random", None, None, "cpu")
    store, _ = RunStore.create_or_resume(str(tmp_path / "s.zarr"), scene, config,
                                         **model.store_dims())
    for ids in stages.window_batches(store):
        stages.encode_windows(store.url, ids)
    stages.embed_text(store.url)
    stages.attend_all(store.url)
    return store, config


def test_predict_labels_equals_the_run_stitching_at_the_same_size(tmp_path: Path) -> None:
    store, config = _attended_store(tmp_path, (250, 300))
    for b in range(len(store.blocks())):
        stages.stitch_block(store.url, b)
    ours = evaluate.predict_labels(store, config.classes, config.logit_scale, (250, 300))
    np.testing.assert_array_equal(ours, store.read("classes"))  # one stitching code for run and eval
    bigger = evaluate.predict_labels(store, config.classes, config.logit_scale, (500, 600))
    assert bigger.shape == (500, 600) and set(np.unique(bigger)) <= set(range(len(config.classes)))
    # ... equal to one bilinear resize of the whole working canvas (the protocol's), up to labels
    # whose probabilities tie within float32 rounding of the other summation order
    text = torch.from_numpy(store.read("text"))
    canvas, _ = stages.working_logits(store, (0, 0, 250, 300), text)
    whole = F.interpolate(canvas[None], size=(500, 600), mode="bilinear", align_corners=False)[0]
    probs = stitching.class_probabilities(whole, config.classes, config.logit_scale)
    expected = stitching.labels_from_probabilities(probs, config.classes).numpy()
    top2 = probs.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-5
    np.testing.assert_array_equal(bigger[decided.numpy()], expected[decided.numpy()])
    rows, cols = store.grid.edges_on(500, 600)
    np.testing.assert_array_equal(rows, [2 * e for e in store.grid.edges()[0]])
    np.testing.assert_array_equal(cols, [2 * e for e in store.grid.edges()[1]])


# -- scores of known predictions ---------------------------------------------------------------------


def _hand_dataset(tmp_path: Path) -> tuple[Any, list[Sample]]:
    """One 20 x 20 image: rows 0-9 class a (row 0 unlabelled), rows 10-19 b (left) and c (right)."""
    mask = np.full((20, 20), 1, dtype=np.uint8)
    mask[10:, :10] = 2
    mask[10:, 10:] = 3
    mask[0] = 0
    write_png(
        tmp_path / "hand" / "images" / "x.png",
        np.ascontiguousarray(structured_rgb(20, 20).transpose(1, 2, 0)),
    )
    write_png(tmp_path / "hand" / "masks" / "x.png", mask)
    spec = spec_from_entry(
        "hand", {"layout": "folder", "labels": {"ids": {1: "a", 2: "b", 3: "c"}, "ignore_ids": [0]}}
    )
    return spec, find_samples("folder", tmp_path / "hand", "val")


def _oracle(monkeypatch: pytest.MonkeyPatch, degrade: Any = None) -> None:
    """Replace the model's labels by the ground truth (``degrade(gt)`` for ProxyCLIP when given)."""
    last: dict[str, np.ndarray] = {}
    real_load = load_labels

    def spy(sample: Sample, legend: Any) -> Any:
        labels, stats = real_load(sample, legend)
        last["gt"] = labels
        return labels, stats

    def predict(store: RunStore, classes: Any, scale: float, shape: tuple[int, int]) -> np.ndarray:
        gt = last["gt"].copy()
        assert gt.shape == shape
        proxyclip = not store.config.attention.kv_extension
        return degrade(gt) if degrade is not None and proxyclip else gt

    monkeypatch.setattr(evaluate, "load_labels", spy)
    monkeypatch.setattr(evaluate, "predict_labels", predict)


def test_perfect_prediction_is_100_miou_and_0_ber(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _oracle(monkeypatch)
    spec, samples = _hand_dataset(tmp_path)
    report = evaluate_dataset(spec, samples, TINY_OPTIONS, tmp_path / "out")
    data = report.to_json()
    for mode in ("proxyclip", "gla"):
        m = data["modes"][mode]
        assert (m["miou"], m["pixel_accuracy"], m["ber"]) == (100.0, 100.0, 0.0)
        assert m["iou"] == {"a": 100.0, "b": 100.0, "c": 100.0}
        assert m["ber_pairs"] == 87 and m["ber_errors"] == 0
    assert data["difference"]["miou"] == 0.0
    assert data["labels"] == {"scored_pixels": 380, "ignored_pixels": 20, "unmatched_pixels": 0,
                              "unmatched_examples": []}


def test_hand_made_confusion_and_boundary_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def degrade(gt: np.ndarray) -> np.ndarray:
        pred = gt.copy()
        pred[gt == 1] = 0  # every b pixel predicted a
        right = np.zeros_like(gt, dtype=bool)
        right[:, 15:] = True
        pred[(gt == 2) & right] = 1  # c predicted b right of the window edge at column 15
        return pred

    _oracle(monkeypatch, degrade)
    spec, samples = _hand_dataset(tmp_path)
    report = evaluate_dataset(spec, samples, TINY_OPTIONS, tmp_path / "out")
    data = report.to_json()
    p = data["modes"]["proxyclip"]
    # Confusion (rows truth a, b, c): [180, 0, 0], [100, 0, 0], [0, 50, 50].
    assert p["confusion"] == [[180, 0, 0], [100, 0, 0], [0, 50, 50]]
    # IoU a = 180 / 280, b = 0 / 150, c = 50 / 100.
    assert p["iou"] == pytest.approx({"a": 100 * 180 / 280, "b": 0.0, "c": 50.0}, abs=1e-3)
    assert p["miou"] == pytest.approx(100 * (180 / 280 + 0.5) / 3, abs=1e-3)
    assert p["pixel_accuracy"] == pytest.approx(100 * 230 / 380, abs=1e-3)
    # Window edges at 112, 224, 336 of the 448 working image are label rows/columns 5, 10, 15.
    # Same-label pairs: rows 40, columns 19 + 9 + 19; errors: the 10 c|b pairs across column 15.
    assert (p["ber_pairs"], p["ber_errors"]) == (87, 10)
    assert p["ber"] == pytest.approx(100 * 10 / 87, abs=1e-3)
    d = data["difference"]
    assert d["miou"] == pytest.approx(100 - p["miou"], abs=1e-3)
    assert d["ber"] == pytest.approx(-p["ber"], abs=1e-3)
    assert d["iou"]["b"] == 100.0
    md = report.markdown()
    assert f"| **mIoU** | {p['miou']:.2f} | 100.00 | {100 - p['miou']:+.2f} |" in md
    assert "| BER (lower is better) | 11.49 | 0.00 | -11.49 |" in md
    paths = write_report(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["modes"]["proxyclip"]["ber_errors"] == 10


# -- the command on the real samples -------------------------------------------------------------------


def _check_outputs(
    out: Path, classes: int, modes: tuple[str, ...], images: int, figures: int
) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    assert data["weights"] == "random" and data["quality_figure"] is False
    assert tuple(data["modes"]) == modes and data["images"] == images == len(data["per_image"])
    for m in modes:
        s = data["modes"][m]
        assert len(s["iou"]) == classes and 0 <= s["miou"] <= 100 and 0 <= s["pixel_accuracy"] <= 100
        assert s["ber"] is None or 0 <= s["ber"] <= 100
        assert np.asarray(s["confusion"]).shape == (classes, classes)
    assert ("difference" in data) == (len(modes) == 2)
    md = (out / "metrics.md").read_text()
    assert "Random weights" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 + classes and all(line.count("|") == len(modes) + 2 + (len(modes) == 2)
                                                for line in table)
    pngs = sorted((out / "figures").glob("*.png")) if figures else []
    assert len(pngs) == figures
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 4 * 448 and im.height > 448
    return data


@pytest.mark.data
def test_eval_vaihingen_both_modes_reuses_encoded_windows(shared_data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[bool] = []
    real = stages.encode_windows

    def counting(url: str, ids: Any) -> stages.StageResult:
        out = real(url, ids)
        calls.append(out.skipped)
        return out

    monkeypatch.setattr(stages, "encode_windows", counting)
    out = tmp_path / "out"
    assert main(["eval", "vaihingen", "--root", str(shared_data / "isprs_vaihingen"), "-o", str(out),
                 "--figures", "1", *TINY]) == 0
    assert calls == [False, True]  # 9 windows, one batch: encoded for ProxyCLIP, reused for GLA
    data = _check_outputs(out, 6, ("proxyclip", "gla"), 1, 1)
    assert data["per_image"][0]["label_shape"] == [512, 512] and data["per_image"][0]["work_shape"] == [
        448,
        448,
    ]
    assert data["labels"]["unmatched_pixels"] == 0 and data["labels"]["ignored_pixels"] > 0
    captured = capsys.readouterr()
    assert "| GLA - ProxyCLIP |" in captured.out and "RANDOM weights" in captured.err


@pytest.mark.data
def test_eval_potsdam_one_mode(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["eval", "potsdam", "--root", str(shared_data / "isprs_potsdam"), "-o", str(out),
                 "--attention", "gla", "-q", *TINY]) == 0
    data = _check_outputs(out, 6, ("gla",), 1, 0)
    assert data["classes"][0] == "road" and data["prompts"][0] == ["road", "parking lot"]


@pytest.mark.data
def test_eval_loveda_with_limit_and_figure(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["eval", "loveda", "--root", str(shared_data / "loveda"), "-o", str(out), "--limit", "1",
                 "--figures", "1", "-q", *TINY]) == 0
    data = _check_outputs(out, 7, ("proxyclip", "gla"), 1, 1)
    assert data["images_available"] == 3 and data["per_image"][0]["label_shape"] == [1024, 1024]
    assert "(the first 1 of 3)" in (out / "metrics.md").read_text()


@pytest.mark.data
def test_eval_dubai_as_a_generic_folder_with_its_colour_legend(shared_data: Path, tmp_path: Path) -> None:
    legend = tmp_path / "dubai.yaml"
    legend.write_text(
        yaml.safe_dump(
            {
                "classes": "building,land|unpaved area,road,vegetation,water",
                "labels": {
                    "colours": {
                        "#3C1098": "building",
                        "#8429F6": "land",
                        "#6EC1E4": "road",
                        "#FEDD3A": "vegetation",
                        "#E2A929": "water",
                    },
                    "ignore_colours": ["#9B9B9B", "#000000"],
                },
            },
            sort_keys=False,
        )
    )
    out = tmp_path / "out"
    assert main(["eval", "folder", "--root", str(shared_data / "dubai_aerial"), "--legend", str(legend),
                 "-o", str(out), "--limit", "2", "--figures", "1", "-q", *TINY]) == 0
    data = _check_outputs(out, 5, ("proxyclip", "gla"), 2, 1)
    assert data["labels"]["unmatched_pixels"] == 0 and data["images_available"] == 72
    assert data["per_image"][0]["label_shape"] == [644, 797] and data["per_image"][0]["work_shape"] == [
        362,
        448,
    ]


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "nope", "--root", "."], "Unknown dataset 'nope'"),
    (["eval", "vaihingen", "--root", "/no/such/folder"], "does not exist"),
    (["eval", "folder", "--root", "."], "needs --legend"),
    (["eval", "vaihingen", "--root", ".", "--classes", "a,b"], "must list 6 classes"),
])
def test_eval_user_errors_exit_2_with_one_sentence(args: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_eval_root_without_images_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "vaihingen", "--root", str(tmp_path), *TINY]) == 2
    assert "No ISPRS images" in capsys.readouterr().err


def test_mode_configs_are_the_two_attentions_with_the_presets_settings() -> None:
    assert attention_config("default", "gla") == GLAConfig()
    assert attention_config("default", "proxyclip") == GLAConfig.proxyclip()
    assert attention_config("clearclip-b16", "gla") == GLAConfig(smoothing=True)


def test_uavid_frames_are_scored_tile_by_tile(tmp_path: Path) -> None:
    frame = np.ascontiguousarray(structured_rgb(120, 150).transpose(1, 2, 0))
    labels = np.zeros((120, 150, 3), dtype=np.uint8)
    labels[:, 75:] = (128, 0, 0)  # building
    write_png(tmp_path / "uavid_test" / "seq1" / "Images" / "000000.png", frame)
    write_png(tmp_path / "uavid_test" / "seq1" / "Labels" / "000000.png", labels)
    spec = replace(get_spec("uavid"), tile=(60, 100))  # the preset's 1080 x 1280 tiles, scaled down
    samples = expand_tiles(find_samples("uavid", tmp_path, "test"), spec.tile)
    report = evaluate_dataset(spec, samples, replace(TINY_OPTIONS, modes=("gla",)), tmp_path / "out")
    assert [(r.name, r.label_shape, r.work_shape) for r in report.images] == [
        ("seq1/000000_0_60_0_100", (60, 100), (269, 448)),
        ("seq1/000000_0_60_50_150", (60, 100), (269, 448)),
        ("seq1/000000_60_120_0_100", (60, 100), (269, 448)),
        ("seq1/000000_60_120_50_150", (60, 100), (269, 448)),
    ]
    assert report.decode.labelled == 4 * 60 * 100 and report.decode.unmatched == 0


def test_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", np.zeros((20, 30, 3), dtype=np.uint8))
    write_png(tmp_path / "masks" / "a.png", np.ones((20, 20), dtype=np.uint8))
    spec = spec_from_entry("x", {"layout": "folder", "labels": {"ids": {1: "a"}}})
    with pytest.raises(DatasetError, match="is 20 x 20 pixels but its image is 30 x 20"):
        evaluate_dataset(spec, find_samples("folder", tmp_path, "val"), TINY_OPTIONS, tmp_path / "out")

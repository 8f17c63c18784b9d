"""End-to-end runs of ``geogla run`` with the tiny preset, and its answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pyogrio
import pystac
import pytest
import rasterio
import rasterio.enums
from rasterio.features import rasterize
from rio_cogeo.cogeo import cog_validate

from geogla.classes import parse_classes
from geogla.cli import main
from geogla.gla import GLAConfig
from geogla.pipelines.run import run_scene, run_stage
from geogla.runconfig import RunConfig
from geogla.stages import StageResult
from geogla.store import RunStore
from tests.conftest import REPO, structured_rgb, write_geotiff

TINY = ["--model", "tiny", "--weights", "random"]


def rasterize_gpkg(gpkg: Path, like: rasterio.DatasetReader) -> np.ndarray:
    """Burn every layer's polygons with their class_id onto the grid of ``like``; 255 elsewhere."""
    out = np.full((like.height, like.width), 255, dtype=np.uint8)
    for name, geometry_type in pyogrio.list_layers(gpkg):
        if geometry_type is None:  # the layer_styles table
            continue
        df = pyogrio.read_dataframe(gpkg, layer=name)
        shapes = [(g, int(c)) for g, c in zip(df.geometry, df["class_id"], strict=True)]
        if shapes:
            burned = rasterize(shapes, out_shape=out.shape, transform=like.transform, fill=255, dtype="uint8")
            out = np.where(burned != 255, burned, out)
    return out


def test_run_writes_aligned_cog_and_styled_gpkg(
    scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["run", str(scene_tif), "--classes", "building,tree|forest,road", "-o", str(out), *TINY])
    assert code == 0
    cog, gpkg = out / "scene.classes.tif", out / "scene.gpkg"
    assert "RANDOM weights" in capsys.readouterr().err
    with rasterio.open(scene_tif) as src, rasterio.open(cog) as dst:
        assert (dst.crs, dst.transform, dst.width, dst.height) == (
            src.crs,
            src.transform,
            src.width,
            src.height,
        )
        assert dst.dtypes[0] == "uint8" and dst.nodata == 255
        assert dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        classes = dst.read(1)
        assert json.loads(dst.tags()["GEOGLA_CLASSES"]) == ["building", "tree", "road"]
        assert dst.colormap(1)[0][:3] == (220, 40, 40)
        assert set(np.unique(classes)) <= {0, 1, 2}
        burned = rasterize_gpkg(gpkg, dst)
    assert (burned == classes).mean() >= 0.97
    layers = {name for name, geometry_type in pyogrio.list_layers(gpkg) if geometry_type is not None}
    assert layers == {["building", "tree", "road"][c] for c in np.unique(classes)}
    assert (out / "scene.zarr").is_dir()
    item = pystac.Item.from_file(str(out / "scene.stac.json"))
    assert set(item.assets) == {"classes", "polygons", "legend"}
    assert Path(item.assets["legend"].get_absolute_href() or "") == out / "scene.classes.qml"
    assert item.properties["geogla:weights"] == "random" and item.properties["proj:code"] == "EPSG:32633"


def test_rerun_resumes_and_gives_the_same_raster(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out), *TINY]
    assert main(args) == 0
    first = rasterio.open(out / "scene.classes.tif").read(1)
    assert main(args) == 0
    assert np.array_equal(rasterio.open(out / "scene.classes.tif").read(1), first)


def test_store_of_another_encoder_config_is_refused(scene_tif: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    assert (
        main(["run", str(scene_tif), "--classes", "building,tree", "-o", str(out), *TINY, "--stride", "56"])
        == 2
    )
    assert "another scene or configuration" in capsys.readouterr().err
    assert main(["run", str(scene_tif), "--classes", "building,tree", "-o", str(out), *TINY, "--stride", "56",
                 "--overwrite"]) == 0


def test_new_classes_or_attention_reuse_the_encoded_windows(scene_tif: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    config = RunConfig(classes=parse_classes("building,tree"), model="tiny", weights="random")
    first = run_scene(str(scene_tif), out, config)
    assert first.timings["encode"] > 0 and not first.resumed
    other_classes = run_scene(str(scene_tif), out, config.with_(classes=parse_classes("water,road,field")))
    assert (
        other_classes.resumed and "encode" not in other_classes.timings and other_classes.timings["text"] > 0
    )
    with rasterio.open(other_classes.outputs["cog"]) as ds:
        assert json.loads(ds.tags()["GEOGLA_CLASSES"]) == ["water", "road", "field"]
        assert set(np.unique(ds.read(1))) <= {0, 1, 2}
    # Another attention: attention and stitching again, encoders not.
    baseline = run_scene(str(scene_tif), out, config.with_(attention=GLAConfig.proxyclip()))
    assert "encode" not in baseline.timings and baseline.timings["attend"] > 0
    # Same settings again: nothing but the output files is recomputed.
    again = run_scene(str(scene_tif), out, config.with_(attention=GLAConfig.proxyclip()))
    assert {"encode", "attend", "text", "stitch"}.isdisjoint(again.timings)


def test_attention_results_of_another_version_are_recomputed(scene_tif: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "out")
    config = RunConfig(classes=parse_classes("building,tree"), model="tiny", weights="random")
    monkeypatch.setattr("geogla.store.ATTENTION_VERSION", 1)
    run_scene(str(scene_tif), out, config)
    monkeypatch.setattr("geogla.store.ATTENTION_VERSION", 2)
    newer = run_scene(str(scene_tif), out, config)
    assert newer.resumed and "encode" not in newer.timings and newer.timings["attend"] > 0


def test_proxyclip_and_gla_store_their_own_attention(scene_tif: Path, tmp_path: Path) -> None:
    """Each mode's stored features are its attention over the stored keys and values, projected:
    ProxyCLIP each window alone, GLA across all windows; the two differ."""
    import torch
    import torch.nn.functional as F

    from geogla import stages
    from geogla.gla import attend

    features = {}
    for mode, config in (("gla", GLAConfig(precision="float32")), ("proxyclip", GLAConfig.proxyclip())):
        out = tmp_path / mode
        assert main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out),
                     "--attention", mode, "--precision", "float32", *TINY]) == 0
        store = RunStore.open(str(out / "scene.zarr"), mode="r")
        assert store.config.attention == config
        source, every = stages.StoreWindows(store, np.arange(len(store.grid))), list(range(len(store.grid)))
        keys, values = source.keys(every), source.values(every)
        offsets = torch.from_numpy(store.grid.token_offsets(store.token_size))
        with torch.inference_mode():
            attended = attend(keys, values, config, offsets)
            expected = F.normalize(stages.model_for(store).project(attended), dim=-1)
        features[mode] = torch.from_numpy(store.read("features")).float()
        # stored in float16: within one float16 step of unit-vector components (2^-11)
        torch.testing.assert_close(features[mode], expected, rtol=0, atol=2**-11)
    assert float((features["gla"] - features["proxyclip"]).abs().max()) > 0.1


def test_attention_algorithm_option_picks_the_streamed_scalable_attention(
    scene_tif: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out),
                 "--attention-algorithm", "scalable", *TINY]) == 0
    store = RunStore.open(str(out / "scene.zarr"), mode="r")
    assert store.config.attention.algorithm == "scalable"
    assert "summary" in store.group and bool(store.read("windows/attended").all())
    with rasterio.open(out / "scene.classes.tif") as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1, 2}


def test_context_radius_option_bounds_gla_to_the_windows_around_each_pixel(
    scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--context-radius 0``: each pixel attends to the windows that cover it only; the stored
    features are that attention over the stored keys and values, projected, and differ from GLA's
    over all windows."""
    import torch
    import torch.nn.functional as F

    from geogla import stages
    from geogla.gla import attend

    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out),
                 "--context-radius", "0", "--precision", "float32", *TINY]) == 0
    store = RunStore.open(str(out / "scene.zarr"), mode="r")
    config = store.config.attention
    assert config == GLAConfig(precision="float32", context_radius=0)
    assert stages.store_algorithm(store) == "local" and not store.read_tensors("summary")
    every = list(range(len(store.grid)))
    source = stages.StoreWindows(store, np.arange(len(store.grid)))
    keys, values = source.keys(every), source.values(every)
    offsets = torch.from_numpy(store.grid.token_offsets(store.token_size))
    model = stages.model_for(store)
    features = torch.from_numpy(store.read("features")).float()
    with torch.inference_mode():
        local = F.normalize(model.project(attend(keys, values, config, offsets)), dim=-1)
        whole = attend(keys, values, GLAConfig(precision="float32"), offsets)
        gla = F.normalize(model.project(whole), dim=-1)
    # stored in float16: within one float16 step of unit-vector components (2^-11)
    torch.testing.assert_close(features, local, rtol=0, atol=2**-11)
    assert float((features - gla).abs().max()) > 0.01

    # a radius of one window stride, in tokens of the preset's key grid
    wide = tmp_path / "wide"
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(wide), "--context-radius", "1",
                 "--dry-run", *TINY]) == 0
    assert "attention  local" in capsys.readouterr().out
    for bad, says in ((["--context-radius", "-1"], "whole number of windows"),
                      (["--context-radius", "1", "--attention", "proxyclip"], "ProxyCLIP")):
        bad_out = tmp_path / "bad"
        assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(bad_out), *bad, *TINY]) == 2
        assert says in capsys.readouterr().err and not bad_out.exists()


def test_class_names_that_are_no_safe_layer_names_run_to_the_end(scene_tif: Path, tmp_path: Path) -> None:
    from geogla.vectorize import layer_names

    spec = "(tree),'); DROP TABLE x;--,say \"hi\",\U0001f333 tree,gpkg_a,class_gpkg_a"
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", spec, "-o", str(out), *TINY]) == 0
    layers = layer_names(parse_classes(spec))
    found = {str(n) for n, _ in pyogrio.list_layers(out / "scene.gpkg")} - {"layer_styles"}
    assert found and found <= set(layers.values())
    names = parse_classes(spec).names
    for class_id, layer in layers.items():
        if layer in found:
            frame = pyogrio.read_dataframe(out / "scene.gpkg", layer=layer)
            assert set(frame["class_name"]) == {names[class_id]}


def test_xarray_opens_the_run_store(scene_tif: Path, tmp_path: Path) -> None:
    import xarray as xr

    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "a,b,c,d", "-o", str(out), "--save-probabilities",
                 *TINY]) == 0
    store = RunStore.open(str(out / "scene.zarr"), mode="r")
    ds = xr.open_zarr(out / "scene.zarr", consolidated=False)
    L, N = len(store.grid), store.tokens_per_window
    assert ds["keys"].dims == ("window", "token", "key_channel") and ds.sizes["window"] == L
    assert ds["features"].dims == ("window", "token", "embed_channel") and ds.sizes["token"] == N
    assert ds["classes"].dims == ("y", "x") and ds.sizes["y"] == 300 and ds.sizes["x"] == 420
    # stored as probability x 255; xarray decodes the packing to 0..1
    probabilities = ds["probabilities"].values
    assert ds["probabilities"].dims == ("class", "y", "x") and probabilities.dtype.kind == "f"
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    np.testing.assert_allclose(probabilities, store.read("probabilities") / 255.0)
    assert all(ds[name].attrs.get("long_name") for name in ds.data_vars)
    windows = xr.open_zarr(out / "scene.zarr", group="windows", consolidated=False)
    assert set(windows.data_vars) == {"box", "valid", "encoded", "attended"} and windows.sizes["window"] == L


def test_probability_cog_is_masked_where_the_class_raster_is_nodata(tmp_path: Path) -> None:
    data = structured_rgb(260, 300)
    data[:, :, :120] = 0  # a nodata collar
    scene = write_geotiff(tmp_path / "collar.tif", data, nodata=0)
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", "building,tree,road,water", "--save-probabilities",
                 "-o", str(out), *TINY]) == 0
    with rasterio.open(out / "collar.classes.tif") as cls:
        valid = cls.read(1) != 255
    with rasterio.open(out / "collar.probabilities.tif") as prob:
        assert 0 < valid.sum() < valid.size
        np.testing.assert_array_equal(prob.dataset_mask() > 0, valid)
        assert prob.count == 4 and prob.descriptions == ("building", "tree", "road", "water")
        assert prob.scales == (1 / 255,) * 4
        assert prob.colorinterp[0] == rasterio.enums.ColorInterp.gray
        assert set(prob.colorinterp[1:]) == {rasterio.enums.ColorInterp.undefined}
        # read through the scale, each valid pixel's probabilities sum to 1 (rounded to 1/255 each)
        total = (prob.read().astype(np.float64) * prob.scales[0]).sum(axis=0)[valid]
        assert np.abs(total - 1.0).max() <= 4 * 0.5 / 255
    # rio-cogeo, the validator users run: both COGs pass without errors or warnings
    for name in ("collar.classes.tif", "collar.probabilities.tif"):
        assert cog_validate(str(out / name)) == (True, [], [])


def test_stac_hrefs_option_writes_absolute_hrefs_and_a_self_link(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(out), "--stac-hrefs", "absolute",
                 *TINY]) == 0
    raw = json.loads((out / "scene.stac.json").read_text())
    selves = [x["href"] for x in raw["links"] if x["rel"] == "self"]
    assert selves == [(out / "scene.stac.json").resolve().as_posix()]
    assert raw["assets"]["classes"]["href"] == (out / "scene.classes.tif").resolve().as_posix()
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(tmp_path / "bad"),
                 "--stac-hrefs", "url", *TINY]) == 2


def test_background_threshold_assigns_background(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # With a threshold of 1.0 no pixel is confident enough: everything becomes background.
    assert main(["run", str(scene_tif), "--classes", "building,tree", "--background", "clutter",
                 "--prob-threshold", "1.0", "-o", str(out), *TINY]) == 0
    with rasterio.open(out / "scene.classes.tif") as ds:
        assert np.all(ds.read(1) == 2)
        assert json.loads(ds.tags()["GEOGLA_CLASSES"]) == ["building", "tree", "clutter"]


def test_nodata_pixels_get_255_and_no_polygons(tmp_path: Path) -> None:
    data = structured_rgb(260, 300)
    data[:, :, :120] = 0  # a nodata collar; windows entirely inside it are not encoded
    scene = write_geotiff(tmp_path / "collar.tif", data, nodata=0)
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    with rasterio.open(scene) as src, rasterio.open(out / "collar.classes.tif") as dst:
        valid = src.dataset_mask() > 0
        classes = dst.read(1)
        assert np.array_equal(classes == 255, ~valid)
        assert np.all(rasterize_gpkg(out / "collar.gpkg", dst)[~valid] == 255)


def test_scene_smaller_than_a_window_is_padded(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "small.tif", structured_rgb(100, 150))
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    with rasterio.open(out / "small.classes.tif") as dst:
        assert dst.shape == (100, 150) and np.all(dst.read(1) != 255)


@pytest.mark.parametrize("args, message", [
    (["missing.tif", "--classes", "a,b"], "does not exist"),
    (["{scene}", "--classes", ""], "class list is empty"),
    (["{scene}", "--classes", "a,,b"], "empty class name"),
    (["{scene}", "--classes", "road,tree,road"], "given twice"),
    (["{scene}", "--classes", "a,b", "--model", "nope"], "Unknown model preset"),
    (["{scene}", "--classes", "a,b", "--bands", "1,2,9"], "Band 9 does not exist"),
    (["{text}", "--classes", "a,b"], "not a raster"),
    (["{scene}", "--classes", "a,b", "--stride", "500"], "--stride"),
])
def test_bad_input_exits_2_with_one_sentence(args: list[str], message: str, scene_tif: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster\n")
    out = tmp_path / "out"
    model = [] if "--model" in args else ["--model", "tiny"]
    argv = [
        "run",
        *[a.format(scene=scene_tif, text=text) for a in args],
        "-o",
        str(out),
        *model,
        "--weights",
        "random",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message.lower() in err[-1].lower(), err
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_folder(
    scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", str(scene_tif), "--classes", "a,b", "-o", str(blocker / "out"), *TINY]) == 2
    assert "cannot be created" in capsys.readouterr().err  # a file stands where a folder would go


def test_command_line_has_no_traceback_on_user_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geogla",
            "run",
            str(tmp_path / "nope.tif"),
            "--classes",
            "a",
            "--model",
            "tiny",
            "--weights",
            "random",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr


def test_labels_give_ber_and_miou(
    scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out), *TINY]) == 0
    with rasterio.open(out / "scene.classes.tif") as ds:
        predicted, profile = ds.read(1), ds.profile
    # Labels equal to the prediction: 100 mIoU over the classes present and a BER of 0.
    labels = tmp_path / "labels.tif"
    profile.update(driver="GTiff")
    with rasterio.open(labels, "w", **profile) as dst:
        dst.write(predicted, 1)
    assert main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out), *TINY,
                 "--labels", str(labels)]) == 0
    report = json.loads((out / "scene.metrics.json").read_text())
    assert report["ber"] == 0.0 and report["miou"] == 100.0
    assert "boundary error rate 0.00%" in capsys.readouterr().out


def test_labels_of_another_size_are_refused(
    scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = write_geotiff(tmp_path / "labels.tif", np.zeros((10, 10), np.uint8))
    out = tmp_path / "out"
    assert (
        main(["run", str(scene_tif), "--classes", "a,b", "-o", str(out), *TINY, "--labels", str(labels)]) == 2
    )
    assert "is 10 x 10 pixels but the scene is 420 x 300" in capsys.readouterr().err
    assert not out.exists()


def test_progress_lines_are_throttled_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from geogla.cli import ProgressPrinter
    from geogla.pipelines.run import Progress

    printer = ProgressPrinter(interval=10.0)
    total = {"encode": 4, "attend": 1, "stitch": 2}
    planned = {"encode": 20.0, "attend": 600.0, "stitch": 7300.0}
    for elapsed, enc in ((1.0, 1), (2.0, 2), (12.0, 3)):
        printer(Progress(done={"encode": enc, "attend": 0, "stitch": 0}, total=total, windows_done=8 * enc,
                         windows_total=32, elapsed=elapsed, worked={"encode": enc}, started={"encode": 0.0},
                         planned=planned))
    printer(Progress(done=dict(total), total=total, windows_done=32, windows_total=32, elapsed=13.0))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3  # t=1, t=12 (10 s later), and the finished state
    # encode at its own pace (4 s a task), the others from the plan ("~")
    assert lines[1] == ("encode 3/4 | attend 0/1 | stitch 0/2, 2.0 windows/s, left: encode <1m, attend ~10m, "
                        "stitch ~2h02m [12s]")
    assert lines[2].startswith("encode 4/4 | attend 1/1 | stitch 2/2")


def test_time_left_follows_each_stage_and_scales_the_plan_by_the_pace_so_far() -> None:
    from geogla.pipelines.run import Progress

    total = {"encode": 10, "attend": 4, "stitch": 2}
    p = Progress(done={"encode": 10, "attend": 1, "stitch": 0}, total=total, windows_done=80,
                 windows_total=80, elapsed=500.0, worked={"encode": 10, "attend": 1},
                 started={"encode": 0.0, "attend": 400.0}, ended={"encode": 400.0},
                 planned={"encode": 200.0, "attend": 100.0, "stitch": 30.0})
    left = p.seconds_left()
    assert left["attend"] == (300.0, True)  # 100 s for its one task, 3 to go
    assert left["stitch"] == (60.0, False)  # encode took twice its plan: so will stitch
    assert "encode" not in left
    # resumed: tasks skipped at once do not set the pace
    p = Progress(done={"encode": 6, "attend": 0, "stitch": 0}, total=total, windows_done=48,
                 windows_total=80, elapsed=30.0, skipped_windows=40, worked={"encode": 1},
                 started={"encode": 0.0})
    assert p.seconds_left() == {"encode": (120.0, True)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_stage_wrapper_gives_freed_heap_back_to_the_os() -> None:
    def fragmenting_stage() -> StageResult:
        # 2 kB blocks come from the heap; keeping every 16th alive leaves the freed ones as holes that
        # glibc does not return by itself (the heap's top stays in use).
        blocks = [bytearray(2000) for _ in range(100_000)]
        kept = blocks[::16]
        del blocks
        grown = psutil.Process().memory_info().rss
        kept_alive.append((kept, grown))
        return StageResult()

    kept_alive: list[tuple[list[bytearray], int]] = []
    run_stage(fragmenting_stage)
    after = psutil.Process().memory_info().rss
    _, grown = kept_alive[0]
    assert grown - after > 100 * 2**20  # most of the ~190 MB of holes went back


def test_stage_wrapper_passes_errors_through() -> None:
    def failing() -> StageResult:
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        run_stage(failing)


def test_help_is_quick_and_does_not_import_torch() -> None:
    # Importing torch takes seconds; asking for help must not.
    code = "import sys; from geogla.cli import main; main(['run', '--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--classes" in done.stdout and done.stdout.strip().endswith("False")


def _slow_stage(seconds: float) -> StageResult:
    import time

    time.sleep(seconds)
    return StageResult({"sleep": seconds})


def test_progress_is_reported_while_a_long_task_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from geogla.pipelines import run as runmod

    monkeypatch.setattr(runmod, "HEARTBEAT", 0.05)
    wave = [runmod.Task("attend", f"sleep-{k}", _slow_stage, (0.4,)) for k in range(2)]
    with runmod.embedded_client() as client:
        seen = list(runmod._run_wave(client, wave, "heartbeat-test", runmod._Limit(client), {}))
    finished = [item for item in seen if item is not None]
    assert [task.name for task, _ in finished] == ["sleep-0", "sleep-1"]
    assert seen.count(None) >= 2  # reported in between, without a finished task

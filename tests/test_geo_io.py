"""Geospatial inputs and outputs: working resolution, probabilities, polygons filters, pixel
coordinates, all-nodata scenes and the answers to bad input (issue: GIS users' expectations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS

from geogla.cli import main
from geogla.scene import open_scene
from geogla.store import RunStore
from tests.conftest import structured_rgb, write_geotiff
from tests.test_run import TINY, rasterize_gpkg


def test_gsd_resamples_the_models_input_but_not_the_outputs(scene_tif: Path, tmp_path: Path) -> None:
    # 0.5 m pixels read at 1 m: the working image is half the size, the outputs keep the file's grid.
    assert open_scene(scene_tif, gsd=1.0).work_shape == (150, 210)
    out = tmp_path / "out"
    assert (
        main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out), "--gsd", "1", *TINY])
        == 0
    )
    with rasterio.open(scene_tif) as src, rasterio.open(out / "scene.classes.tif") as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        classes = dst.read(1)
        assert np.all(classes != 255)
        assert (rasterize_gpkg(out / "scene.gpkg", dst) == classes).mean() >= 0.99


def test_gsd_stitching_equals_a_whole_canvas_resize(scene_tif: Path, tmp_path: Path) -> None:
    """Blocks stitched one by one and resampled equal one global bilinear resize of the canvas."""
    import torch
    import torch.nn.functional as F

    from geogla import stages, stitching
    from geogla.classes import parse_classes
    from geogla.pipelines.run import run_scene
    from geogla.runconfig import RunConfig

    config = RunConfig(classes=parse_classes("building,tree,road"), model="tiny", weights="random", block=128,
                       save_probabilities=True)
    result = run_scene(str(scene_tif), str(tmp_path / "out"), config, gsd=0.8)
    store = RunStore.open(result.store_url)
    scene = store.scene
    text = torch.from_numpy(store.read("text"))
    canvas, _ = stages.working_logits(store, (0, 0, *scene.work_shape), text)
    whole = F.interpolate(canvas[None], size=scene.georef.shape, mode="bilinear", align_corners=False)[0]
    expected = stitching.class_probabilities(whole, config.classes, config.logit_scale)
    got = torch.from_numpy(store.read("probabilities").astype(np.float32)) / 255
    assert (got - expected).abs().max() < 1 / 255 + 1e-4


def test_save_probabilities_writes_a_band_per_class(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree|forest,road", "-o", str(out),
                 "--save-probabilities", *TINY]) == 0
    with rasterio.open(out / "scene.probabilities.tif") as p, rasterio.open(out / "scene.classes.tif") as c:
        assert p.count == 3 and p.descriptions == ("building", "tree", "road")
        assert (p.crs, p.transform) == (c.crs, c.transform)
        probs, classes = p.read(), c.read(1)
    # The class raster is the argmax of the probabilities (up to ties after quantising to 1/255).
    top = probs.max(axis=0)
    picked = np.take_along_axis(probs, classes[None].astype(np.int64), axis=0)[0]
    assert np.all(top - picked <= 1)


def test_min_area_drops_small_polygons(scene_tif: Path, tmp_path: Path) -> None:
    areas = {}
    for name, extra in (("all", []), ("big", ["--min-area", "50"])):
        out = tmp_path / name
        assert (
            main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out), *TINY, *extra])
            == 0
        )
        gpkg = out / "scene.gpkg"
        areas[name] = np.concatenate([pyogrio.read_dataframe(gpkg, layer=n)["area"].to_numpy()
                                      for n, g in pyogrio.list_layers(gpkg) if g is not None])
    assert areas["big"].min() >= 50
    assert sorted(areas["big"]) == sorted(a for a in areas["all"] if a >= 50)


def test_jpeg_without_crs_runs_in_pixel_coordinates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jpeg = tmp_path / "frame.jpg"
    Image.fromarray(structured_rgb(240, 320).transpose(1, 2, 0)).save(jpeg, quality=95)
    out = tmp_path / "out"
    assert main(["run", str(jpeg), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("no CRS") == 1 and "pixel coordinates" in err
    with rasterio.open(out / "frame.classes.tif") as dst:
        assert dst.crs is None and tuple(dst.transform)[:6] == (1, 0, 0, 0, -1, 0)
        assert (rasterize_gpkg(out / "frame.gpkg", dst) == dst.read(1)).mean() >= 0.99
    for name, geometry_type in pyogrio.list_layers(out / "frame.gpkg"):
        if geometry_type is not None:
            df = pyogrio.read_dataframe(out / "frame.gpkg", layer=name)
            minx, miny, maxx, maxy = df.total_bounds
            assert minx >= 0 and maxx <= 320 and miny >= -240 and maxy <= 0
            assert df.crs is None


def test_all_nodata_scene_warns_and_writes_empty_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = write_geotiff(tmp_path / "empty.tif", np.zeros((3, 200, 260), np.uint8), nodata=0)
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    assert "entirely nodata" in capsys.readouterr().err
    with rasterio.open(out / "empty.classes.tif") as dst:
        assert np.all(dst.read(1) == 255)
    assert [g for _, g in pyogrio.list_layers(out / "empty.gpkg") if g is not None] == []


@pytest.mark.parametrize("case, args, message", [
    ("truncated", ["--classes", "a,b"], "truncated or corrupt"),
    ("scene", ["--classes", "a,b", "--gsd", "-2"], "--gsd must be a positive"),
    ("scene", ["--classes", "a,b", "--gsd", "0"], "--gsd must be a positive"),
    ("jpeg", ["--classes", "a,b", "--gsd", "1"], "has no CRS"),
    ("scene", ["--classes", "a,b", "--min-area", "-1"], "--min-area"),
    ("scene", ["--classes", "a,b", "--bands", "x"], "band numbers"),
])
def test_more_bad_input(case: str, args: list[str], message: str, scene_tif: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    if case == "truncated":
        full = write_geotiff(tmp_path / "full.tif", structured_rgb(512, 512), tiled=True, blockxsize=256,
                             blockysize=256)
        path = tmp_path / "cut.tif"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    elif case == "jpeg":
        path = tmp_path / "frame.jpg"
        Image.fromarray(structured_rgb(64, 64).transpose(1, 2, 0)).save(path)
    else:
        path = scene_tif
    out = tmp_path / "out"
    assert main(["run", str(path), *args, "-o", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_outputs_record_the_classes(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    with rasterio.open(out / "scene.classes.tif") as dst:
        assert json.loads(dst.tags()["GEOGLA_CLASSES"]) == ["building", "tree"]


def test_simplify_keeps_neighbours_edge_matched(scene_tif: Path, tmp_path: Path) -> None:
    import shapely

    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", "building,tree,road", "-o", str(out), "--simplify", "2",
                 *TINY]) == 0
    gpkg = out / "scene.gpkg"
    geoms = np.concatenate([pyogrio.read_dataframe(gpkg, layer=n).geometry.to_numpy()
                            for n, g in pyogrio.list_layers(gpkg) if g is not None])
    assert len(geoms) and all(g.is_valid for g in geoms)
    # A valid coverage: simplified neighbours neither overlap nor open gaps along shared edges.
    assert shapely.coverage_is_valid(geoms)
    with rasterio.open(out / "scene.classes.tif") as dst:
        assert (rasterize_gpkg(gpkg, dst) == dst.read(1)).mean() >= 0.9


def test_a_scene_georeferenced_by_gcps_gives_outputs_in_their_crs(tmp_path: Path) -> None:
    """GCPs and their CRS, no geotransform: the outputs are on the grid GDAL's GCP transformer
    warps the scene to (the transformer GIS clients display it with), in the GCPs' CRS."""
    from rasterio.control import GroundControlPoint
    from rasterio.transform import Affine
    from rasterio.warp import calculate_default_transform

    height, width = 300, 420
    # a grid rotated by 5 degrees, 0.5 m pixels, in UTM 33N
    truth = Affine.translation(500000, 5000000) @ Affine.rotation(5) @ Affine.scale(0.5, -0.5)
    points = [(r, c) for r in (0, height / 2, height) for c in (0, width / 2, width)]
    gcps = [GroundControlPoint(row=r, col=c, x=(truth @ (c, r))[0], y=(truth @ (c, r))[1], z=0.0)
            for r, c in points]
    crs = CRS.from_epsg(32633)
    scene = tmp_path / "gcps.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8") as dst:
        dst.write(structured_rgb(height, width))
        dst.gcps = (gcps, crs)
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", "a,b", "-o", str(out), *TINY]) == 0
    expected, exp_width, exp_height = calculate_default_transform(crs, crs, width, height, gcps=gcps)
    with rasterio.open(out / "gcps.classes.tif") as cog:
        assert cog.crs == crs and (cog.width, cog.height) == (exp_width, exp_height)
        assert cog.transform.almost_equals(expected)
        classes = cog.read(1)
    # the warped grid's corners outside the rotated scene are nodata, the scene's inside are not
    assert classes[0, 0] == 255 and classes[exp_height // 2, exp_width // 2] != 255
    frame = pyogrio.read_dataframe(out / "gcps.gpkg", layer=pyogrio.list_layers(out / "gcps.gpkg")[0][0])
    assert CRS.from_user_input(frame.crs) == crs
    left, bottom, right, top = frame.total_bounds
    assert 499000 < left < right < 501000 and 4999000 < bottom < top < 5001000


def test_a_scene_read_by_url_gives_the_local_runs_outputs(tmp_path: Path) -> None:
    """``geogla run http://...``: GDAL reads the remote GeoTIFF by range requests (a loopback
    server that honours them); the class raster is the local run's."""
    from tests.http_server import serving

    www = tmp_path / "www"
    www.mkdir()
    scene = write_geotiff(www / "scene.tif", structured_rgb(300, 420))
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["run", str(scene), "--classes", "a,b", "-o", str(local), *TINY]) == 0
    with serving(www) as server:
        assert main(["run", f"{server.url}/scene.tif", "--classes", "a,b", "-o", str(remote), *TINY]) == 0
        assert server.served > 0
        assert main(["run", f"{server.url}/missing.tif", "--classes", "a,b", "-o", str(tmp_path / "bad"),
                     *TINY]) == 2
    with rasterio.open(local / "scene.classes.tif") as a, rasterio.open(remote / "scene.classes.tif") as b:
        assert a.profile["transform"] == b.profile["transform"] and a.crs == b.crs
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert not (tmp_path / "bad").exists()


def test_a_bbox_of_a_large_remote_cog_reads_only_the_ranges_it_needs(tmp_path: Path) -> None:
    """``--bbox`` on a URL: GDAL reads the tiles under the box (and the header), not the file."""
    from tests.http_server import serving

    www = tmp_path / "www"
    www.mkdir()
    image = np.tile(structured_rgb(512, 512, seed=2), (1, 8, 8))  # 4096 x 4096, 48 MiB
    big = write_geotiff(www / "big.tif", image, tiled=True, blockxsize=256, blockysize=256)
    size = big.stat().st_size
    x0, y0 = 500000.0, 5000000.0  # write_geotiff's origin, 0.5 m pixels
    box = f"{x0 + 600},{y0 - 700},{x0 + 700},{y0 - 600}"  # 200 x 200 pixels, under 2 x 2 tiles
    out = tmp_path / "out"
    with serving(www) as server:
        assert main(["run", f"{server.url}/big.tif", "--bbox", box, "--classes", "a,b", "-o", str(out),
                     *TINY]) == 0
        served = server.served
    # the 2 x 2 tiles under the box (1.6% of the file), each read a few times (the scene's check,
    # the encode tasks), and the header
    assert 0 < served < size / 10, (served, size)
    with rasterio.open(out / "big.classes.tif") as ds:
        assert ds.shape == (200, 200) and ds.transform.c == x0 + 600 and ds.transform.f == y0 - 600


def test_an_unreachable_url_exits_2_with_one_sentence(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/scene.tif"  # nothing listens there
    assert main(["run", url, "--classes", "a", "-o", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"The scene {url} cannot be reached: " in err, err
    assert not (tmp_path / "out").exists()

"""Virtual scenes: several files run as one mosaic, and a scene cut to --bbox (issue 21)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from geogla.cli import main
from geogla.env import s3_endpoint_options
from geogla.errors import ConfigError, SceneError
from geogla.mosaic import Grid, SourceFile, cut_grid, mosaic_grid, parse_bbox
from geogla.paths import gdal_name
from geogla.scene import SceneReader, open_scene
from tests.conftest import structured_rgb, write_geotiff

TINY = ["--model", "tiny", "--weights", "random"]
ORIGIN = (500000.0, 5000000.0)


def _tiles(folder: Path, image: np.ndarray, rows: int = 2, cols: int = 2, res: float = 0.5) -> list[Path]:
    """``image`` (3, H, W) cut into ``rows`` x ``cols`` adjacent GeoTIFFs on one grid."""
    folder.mkdir(parents=True, exist_ok=True)
    _, h, w = image.shape
    ys, xs = np.linspace(0, h, rows + 1).astype(int), np.linspace(0, w, cols + 1).astype(int)
    paths = []
    for i in range(rows):
        for j in range(cols):
            t = from_origin(ORIGIN[0] + xs[j] * res, ORIGIN[1] - ys[i] * res, res, res)
            part = image[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            paths.append(write_geotiff(folder / f"tile_{i}_{j}.tif", np.ascontiguousarray(part), transform=t))
    return paths


def _classes(path: Path) -> tuple[np.ndarray, Affine]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform


def _source(left: float, top: float, width: int, height: int, res: float) -> SourceFile:
    return SourceFile(name="x.tif", crs=rasterio.CRS.from_epsg(32633),
                      transform=from_origin(left, top, res, res), width=width, height=height,
                      dtypes=("uint8",) * 3, nodata=None,
                      colorinterp=("red", "green", "blue"), tags={})


# -- pure functions ----------------------------------------------------------------------------
def test_mosaic_grid_takes_the_finest_resolution_over_the_union() -> None:
    grid = mosaic_grid([_source(0, 100, 100, 100, 1.0), _source(100, 100, 25, 50, 2.0)])
    assert grid.transform == Affine(1.0, 0, 0, 0, -1.0, 100)
    assert (grid.width, grid.height) == (150, 100)


def test_mosaic_grid_snaps_float_noise_to_whole_pixels() -> None:
    third = 1 / 3
    grid = mosaic_grid([_source(0, 1, 3, 3, third), _source(1, 1, 3, 3, third)])
    assert (grid.width, grid.height) == (6, 3)


def test_cut_grid_takes_every_pixel_the_box_touches() -> None:
    grid = Grid(from_origin(0, 100, 1.0, 1.0), 100, 100, None)
    cut = cut_grid(grid, (10.5, 20.0, 30.0, 80.2), "s")
    assert cut.transform == from_origin(10, 81, 1.0, 1.0)
    assert (cut.width, cut.height) == (20, 61)
    edge = cut_grid(grid, (-50, -50, 5, 5), "s")  # clipped to the grid
    assert (edge.width, edge.height, edge.transform.c, edge.transform.f) == (5, 5, 0, 5)
    with pytest.raises(ConfigError, match="does not overlap the scene s"):
        cut_grid(grid, (200, 200, 300, 300), "s")


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,x", "3,0,1,5", "0,5,1,5", "0,0,nan,1"])
def test_bad_bboxes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--bbox"):
        parse_bbox(text)


def test_gdal_names_of_urls() -> None:
    assert gdal_name("https://h:8/a/b.tif") == "/vsicurl/https://h:8/a/b.tif"
    assert gdal_name("s3://bucket/k/a.tif") == "/vsis3/bucket/k/a.tif"
    assert gdal_name("file:///data/a.tif") == "/data/a.tif"
    assert gdal_name("/vsimem/a.tif") == "/vsimem/a.tif"
    assert gdal_name("rel.tif").startswith("/") and gdal_name("rel.tif").endswith("/rel.tif")


def test_s3_endpoint_for_gdal_from_the_aws_endpoint_url() -> None:
    assert s3_endpoint_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    assert s3_endpoint_options({"AWS_ENDPOINT_URL": "https://s3.example.org"})["AWS_HTTPS"] == "YES"
    assert s3_endpoint_options({"AWS_ENDPOINT_URL": "http://h:1", "AWS_S3_ENDPOINT": "x"}) == {}
    assert s3_endpoint_options({}) == {}


# -- mosaics -----------------------------------------------------------------------------------
def test_four_tiles_give_the_class_raster_of_their_mosaic_as_one_file(tmp_path: Path) -> None:
    """GLA attends across the whole mosaic: no seam at the files' borders, the one-file labels."""
    image = structured_rgb(300, 420, seed=5)
    whole = write_geotiff(tmp_path / "whole.tif", image)
    tiles = _tiles(tmp_path / "tiles", image)
    assert main(["run", str(whole), "--classes", "a,b,c", "-o", str(tmp_path / "one"), *TINY]) == 0
    assert main(["run", *map(str, tiles), "--classes", "a,b,c", "-o", str(tmp_path / "four"), *TINY]) == 0
    assert main(["run", str(tmp_path / "tiles"), "--classes", "a,b,c", "-o", str(tmp_path / "folder"),
                 *TINY]) == 0
    expected, transform = _classes(tmp_path / "one" / "whole.classes.tif")
    for got_path in (tmp_path / "four" / "tile_0_0-mosaic.classes.tif",
                     tmp_path / "folder" / "tiles.classes.tif"):
        got, got_transform = _classes(got_path)
        assert got_transform == transform
        np.testing.assert_array_equal(got, expected)


def test_a_gap_between_files_is_nodata(tmp_path: Path) -> None:
    image = structured_rgb(200, 200, seed=1)
    a, b, c, _ = _tiles(tmp_path / "t", image)  # the bottom-right tile left out
    scene = open_scene([str(a), str(b), str(c)])
    assert scene.georef.shape == (200, 200) and scene.stem == "tile_0_0-mosaic"
    with SceneReader(scene) as reader:
        rgb, valid = reader.read((0, 0, 200, 200))
    assert valid[:100].all() and valid[:, :100].all() and not valid[100:, 100:].any()
    np.testing.assert_allclose(rgb[:, :100, :100], image[:, :100, :100] / 255.0, atol=1e-6)


def test_coarser_files_are_resampled_to_the_finest(tmp_path: Path) -> None:
    fine = write_geotiff(tmp_path / "fine.tif", structured_rgb(100, 100),
                         transform=from_origin(*ORIGIN, 0.5, 0.5))
    coarse = write_geotiff(tmp_path / "coarse.tif", structured_rgb(50, 50),
                           transform=from_origin(ORIGIN[0] + 50, ORIGIN[1], 1.0, 1.0))
    scene = open_scene([str(fine), str(coarse)])
    assert scene.georef.shape == (100, 200)
    assert scene.georef.transform[0] == 0.5
    with SceneReader(scene) as reader:
        _, valid = reader.read((0, 0, 100, 200))
    assert valid.all()


def test_a_vrt_file_is_a_scene(tmp_path: Path) -> None:
    tiles = _tiles(tmp_path / "t", structured_rgb(100, 100))
    vrt = tmp_path / "m.vrt"
    vrt.write_text(open_scene([str(p) for p in tiles]).vrt)
    scene = open_scene(str(vrt))
    assert scene.georef.shape == (100, 100) and scene.stem == "m" and scene.vrt == ""


@pytest.mark.parametrize("case", ["crs", "bands", "dtype"])
def test_files_that_cannot_form_one_mosaic_are_refused(tmp_path: Path, case: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    a = write_geotiff(tmp_path / "a.tif", structured_rgb(60, 60))
    other = {"crs": dict(data=structured_rgb(60, 60), crs="EPSG:32632"),
             "bands": dict(data=structured_rgb(60, 60)[:1]),
             "dtype": dict(data=structured_rgb(60, 60).astype(np.uint16))}[case]
    b = write_geotiff(tmp_path / "b.tif", transform=from_origin(ORIGIN[0] + 30, ORIGIN[1], 0.5, 0.5),
                      **other)  # type: ignore[arg-type]
    out = tmp_path / "out"
    assert main(["run", str(a), str(b), "--classes", "x,y", "-o", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{a}" in err and f"{b}" in err
    expected = {"crs": "different CRSs", "bands": "different band counts", "dtype": "different data types"}
    assert expected[case] in err
    assert not out.exists()


def test_files_without_georeferencing_are_refused_in_a_mosaic_but_cut_alone(tmp_path: Path) -> None:
    a = write_geotiff(tmp_path / "a.tif", structured_rgb(60, 80), crs=None, transform=Affine.identity())
    b = write_geotiff(tmp_path / "b.tif", structured_rgb(60, 80), crs=None, transform=Affine.identity())
    with pytest.raises(SceneError, match="is not georeferenced, so it has no place in a mosaic"):
        open_scene([str(a), str(b)])
    cut = open_scene(str(a), bbox=(10, -30, 50, -5))  # pixel coordinates: x = column, y = -row
    assert cut.georef.shape == (25, 40) and cut.pixel_coordinates
    assert cut.georef.transform == (1.0, 0.0, 10.0, 0.0, -1.0, -5.0)


def test_an_empty_folder_and_a_folder_among_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="holds no raster files"):
        open_scene(str(tmp_path / "empty"))
    a = write_geotiff(tmp_path / "a.tif", structured_rgb(60, 60))
    with pytest.raises(SceneError, match="is a folder"):
        open_scene([str(a), str(tmp_path / "empty")])


# -- --bbox ------------------------------------------------------------------------------------
def test_bbox_cuts_the_scene_in_its_crs_or_in_longitude_latitude(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "s.tif", structured_rgb(400, 400))
    x0, y0 = ORIGIN
    scene = open_scene(str(path), bbox=(x0 + 10.2, y0 - 60, x0 + 50, y0 - 20.1))
    assert scene.georef.shape == (80, 80)  # rows 40..120, columns 20..100
    assert scene.georef.transform[2] == x0 + 10 and scene.georef.transform[5] == y0 - 20
    assert scene.stem == "s" and scene.sources == (str(path),)
    with SceneReader(scene) as reader:
        rgb, _ = reader.read((0, 0, 80, 80))
    with rasterio.open(path) as ds:
        expected = ds.read(window=((40, 120), (20, 100))) / 255.0
    np.testing.assert_allclose(rgb, expected, atol=1e-6)
    from rasterio.warp import transform_bounds

    lonlat = transform_bounds("EPSG:32633", "EPSG:4326", x0 + 10.2, y0 - 60, x0 + 50, y0 - 20.1)
    by_lonlat = open_scene(str(path), bbox=lonlat, bbox_crs="EPSG:4326")
    t = by_lonlat.georef.affine
    # the longitude/latitude box encloses the UTM box, so its cut holds the UTM cut
    assert t.c <= x0 + 10 and t.f >= y0 - 20
    assert t.c + by_lonlat.georef.width * 0.5 >= x0 + 50 and t.f - by_lonlat.georef.height * 0.5 <= y0 - 60


def test_bbox_runs_write_outputs_over_the_box_and_bad_boxes_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_geotiff(tmp_path / "s.tif", structured_rgb(400, 500))
    x0, y0 = ORIGIN
    box = f"{x0 + 20},{y0 - 150},{x0 + 180},{y0 - 10}"
    assert main(["run", str(path), "--bbox", box, "--classes", "a,b", "-o", str(tmp_path / "o"), *TINY]) == 0
    classes, transform = _classes(tmp_path / "o" / "s.classes.tif")
    assert classes.shape == (280, 320) and transform == from_origin(x0 + 20, y0 - 10, 0.5, 0.5)
    capsys.readouterr()
    bad = {"1,2,3": "--bbox takes four numbers",
           "0,0,1,1": "does not overlap the scene",
           f"{box} --bbox-crs EPSG:99999999": "is not a CRS"}
    for args, message in bad.items():
        out = tmp_path / "bad"
        assert main(["run", str(path), "--bbox", *args.split(), "--classes", "a", "-o", str(out), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not out.exists()


def test_a_plain_scene_is_described_as_before_virtual_scenes(scene_tif: Path) -> None:
    """The run store's fingerprint hashes the scene's description: a plain file's keeps the keys it
    had, so that stores made before virtual scenes existed are resumed, not made again."""
    assert set(open_scene(str(scene_tif)).to_json()) == {
        "path", "georef", "band_count", "band_indexes", "dtype", "stretch", "work_shape", "driver"}


def test_a_cut_has_the_validity_of_the_plain_scene_with_a_nodata_value(tmp_path: Path) -> None:
    """With nodata 0, a pixel is nodata only where every band is 0 (rasterio's dataset mask):
    one band at 0 is still data, in a plain scene and through the VRT of a cut or a mosaic."""
    image = structured_rgb(60, 80)
    image[:, :10, :10] = 0  # nodata
    image[0, 20:30, 20:30] = 0  # red 0 only: data
    path = write_geotiff(tmp_path / "n.tif", image, nodata=0)
    plain = open_scene(str(path))
    x0, y0 = ORIGIN
    cut = open_scene(str(path), bbox=(x0, y0 - 30, x0 + 40, y0))  # the whole file
    assert cut.vrt and cut.georef.shape == plain.georef.shape
    with SceneReader(plain) as a, SceneReader(cut) as b:
        valid_plain, valid_cut = a.read_valid((0, 0, 60, 80)), b.read_valid((0, 0, 60, 80))
    assert not valid_plain[:10, :10].any() and valid_plain[20:30, 20:30].all()
    np.testing.assert_array_equal(valid_cut, valid_plain)


def test_a_folder_of_one_raster_is_that_raster_named_after_the_folder(tmp_path: Path) -> None:
    (tmp_path / "area").mkdir()
    one = write_geotiff(tmp_path / "area" / "only.tif", structured_rgb(60, 80))
    scene = open_scene(str(tmp_path / "area"))
    assert scene.path == str(one) and scene.vrt == "" and scene.stem == "area"


def test_a_bbox_of_negative_coordinates_is_taken_as_given(tmp_path: Path) -> None:
    """West of Greenwich and south of the equator a box starts with a minus sign, which argparse
    would take for an option: ``--bbox -93.65,41.60,...`` works as typed."""
    from geogla.cli import joined_signed_values

    assert joined_signed_values(["run", "s.tif", "--bbox", "-1,2,3,4", "-o", "x"]) == [
        "run", "s.tif", "--bbox=-1,2,3,4", "-o", "x"]
    assert joined_signed_values(["run", "s.tif", "--bbox", "-o"]) == ["run", "s.tif", "--bbox", "-o"]
    scene = write_geotiff(tmp_path / "iowa.tif", structured_rgb(100, 100), crs="EPSG:4326",
                          transform=from_origin(-93.7, 41.7, 0.001, 0.001))
    out = tmp_path / "out"
    assert main(["run", str(scene), "--bbox", "-93.68,41.63,-93.65,41.68", "--classes", "a,b", "-o", str(out),
                 *TINY]) == 0
    classes, transform = _classes(out / "iowa.classes.tif")
    assert classes.shape == (50, 30) and transform.c == pytest.approx(-93.68)
    with pytest.raises(ConfigError, match=r"--bbox -93.62,41.58,-93.6,41.6 \(EPSG:4326\) does not overlap"):
        open_scene(str(tmp_path / "iowa.tif"), bbox=(-93.62, 41.58, -93.60, 41.60), bbox_crs="EPSG:4326")

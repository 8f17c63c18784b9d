"""Reading scenes: bands, bit depth, nodata, padding, and the errors for unusable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geogla.errors import SceneError
from geogla.scene import SceneReader, open_scene
from tests.conftest import structured_rgb, write_geotiff


def test_rgb_uint8_passes_through(scene_tif: Path) -> None:
    scene = open_scene(scene_tif)
    assert scene.band_indexes == (1, 2, 3) and scene.stretch is None
    with SceneReader(scene) as r:
        rgb, valid = r.read((0, 0, 10, 20))
    expected = structured_rgb(300, 420)[:, :10, :20] / 255.0
    assert np.allclose(rgb, expected, atol=1e-6) and valid.all()


def test_padding_beyond_the_edge_is_zero_and_invalid(scene_tif: Path) -> None:
    with SceneReader(open_scene(scene_tif)) as r:
        rgb, valid = r.read((290, 410, 310, 430))
    assert valid[:10, :10].all() and not valid[10:].any() and not valid[:, 10:].any()
    assert np.all(rgb[:, 10:] == 0)


def test_uint16_single_band_gets_one_scene_wide_stretch(tmp_path: Path) -> None:
    data = np.linspace(1000, 3000, 200 * 300, dtype=np.float64).reshape(1, 200, 300).astype(np.uint16)
    scene = open_scene(write_geotiff(tmp_path / "pan.tif", data))
    assert scene.band_indexes == (1, 1, 1)
    (lo, hi), = set(scene.stretch or ())
    assert lo == pytest.approx(np.percentile(data, 2), rel=1e-3) and hi == pytest.approx(
        np.percentile(data, 98), rel=1e-3
    )
    with SceneReader(scene) as r:
        a, _ = r.read((0, 0, 1, 5))
        b, _ = r.read((199, 295, 200, 300))
    assert np.all(a == 0) and np.all(b == 1)  # clipped at the scene's percentiles, not the window's


def test_nodata_is_invalid(tmp_path: Path) -> None:
    data = structured_rgb(50, 60)
    data[:, :, :10] = 0
    scene = open_scene(write_geotiff(tmp_path / "nd.tif", data, nodata=0))
    with SceneReader(scene) as r:
        _, valid = r.read((0, 0, 50, 60))
        assert not valid[:, :10].any() and valid[:, 10:].all()
        assert np.array_equal(r.read_valid((0, 0, 50, 60)), valid)


def test_band_choice(tmp_path: Path) -> None:
    data = np.stack([np.full((20, 20), v, np.uint8) for v in (10, 20, 30, 40)])
    path = write_geotiff(tmp_path / "nir.tif", data)
    scene = open_scene(path, bands=[4, 1, 2])
    with SceneReader(scene) as r:
        rgb, _ = r.read((0, 0, 2, 2))
    assert np.allclose(rgb[:, 0, 0] * 255, [40, 10, 20])
    with pytest.raises(SceneError, match="Band 5 does not exist"):
        open_scene(path, bands=[5, 1, 2])


def test_truncated_geotiff_is_named(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "full.tif", structured_rgb(512, 512), tiled=True, blockxsize=256,
                         blockysize=256)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SceneError, match="truncated or corrupt"):
        open_scene(cut)


def test_not_a_raster_and_missing(tmp_path: Path) -> None:
    (tmp_path / "t.tif").write_text("hello")
    with pytest.raises(SceneError, match="not a raster"):
        open_scene(tmp_path / "t.tif")
    with pytest.raises(SceneError, match="does not exist"):
        open_scene(tmp_path / "nope.tif")


def test_working_resolution_reads_the_whole_scene_resampled(scene_tif: Path) -> None:
    """At half resolution a window covers twice the ground: pixels are the file's, resampled."""
    scene = open_scene(scene_tif, gsd=1.0)
    assert scene.work_shape == (150, 210)
    with SceneReader(scene) as r:
        rgb, valid = r.read((0, 0, 150, 210))
    full = structured_rgb(300, 420) / 255.0
    two_by_two = full.reshape(3, 150, 2, 210, 2).mean(axis=(2, 4))
    assert valid.all()
    assert np.abs(rgb - two_by_two).mean() < 0.02  # GDAL's bilinear at scale 2 ~ the 2 x 2 mean
    assert np.abs(rgb - full[:, :150, :210]).mean() > 0.05  # not a crop of the file

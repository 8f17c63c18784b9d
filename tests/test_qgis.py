"""A run's outputs opened the way users open them: QGIS 3.22 headless and the GDAL 3.6 of Debian
12 (``apt-get install qgis python3-qgis``, which brings GDAL's tools and Python utilities).

QGIS's and that GDAL's Python bindings belong to the system's Python, not to this project's
environment, so they run in subprocesses of that Python (``tests/qgis_probe.py`` for QGIS).
Skipped where they are absent (``.ci/run`` installs nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rasterio

from geogla.classes import parse_classes
from geogla.cli import main
from geogla.vectorize import layer_names
from tests.conftest import structured_rgb, write_geotiff

QGIS_PYTHON = os.environ.get("GEOGLA_QGIS_PYTHON", "/usr/bin/python3")
PROBE = Path(__file__).with_name("qgis_probe.py")


def _has_qgis() -> bool:
    try:
        done = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


HAS_QGIS = _has_qgis()


def _probe(out: Path, stem: str) -> dict[str, object]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([QGIS_PYTHON, str(PROBE), str(out), stem], capture_output=True, text=True,
                          timeout=300, env=env, check=True)
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


SPEC = "building,(tree),'); DROP TABLE x;--,\U0001f333 tree"


def _run(tmp_path: Path) -> Path:
    data = structured_rgb(260, 300)
    data[:, :, :100] = 0  # a nodata collar
    scene = write_geotiff(tmp_path / "scene.tif", data, nodata=0)
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", SPEC, "-o", str(out), "--save-probabilities",
                 "--model", "tiny", "--weights", "random"]) == 0
    return out


@pytest.mark.skipif(not HAS_QGIS, reason="QGIS's Python bindings are not installed")
def test_qgis_shows_class_names_layers_and_probabilities(tmp_path: Path) -> None:
    spec = SPEC
    out = _run(tmp_path)
    report = _probe(out, "scene")
    names = list(parse_classes(spec).names)

    classes = report["classes"]
    assert isinstance(classes, dict)
    # the legend lists the classes by name (the .qml beside the COG), not 256 numbered entries
    assert classes["valid"] and classes["renderer"] == "paletted" and classes["legend"] == names

    layers = report["gpkg"]
    assert isinstance(layers, list) and layers
    allowed = set(layer_names(parse_classes(spec)).values())
    assert all(layer["valid"] and layer["features"] > 0 and layer["name"] in allowed for layer in layers)

    probabilities = report["probabilities"]
    assert isinstance(probabilities, dict) and probabilities["valid"]
    # one band per class, named after it and read as 0..1 (QGIS adds the internal mask as a
    # last, alpha-like band: masked pixels draw transparent)
    bands = probabilities["band_names"][: len(names)]
    assert [band.split(": ", 1)[1] for band in bands] == names
    assert probabilities["scales"][: len(names)] == pytest.approx([1 / 255] * len(names))


def _has_gdal_utilities() -> bool:
    try:
        done = subprocess.run([QGIS_PYTHON, "-c", "import osgeo_utils.samples.validate_gpkg"],
                              capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and shutil.which("ogrinfo") is not None


@pytest.mark.skipif(not _has_gdal_utilities(), reason="the system GDAL's utilities are not installed")
def test_the_system_gdal_validates_and_opens_the_outputs_without_a_warning(tmp_path: Path) -> None:
    out = _run(tmp_path)
    for module, target in (("validate_gpkg", "scene.gpkg"),
                           ("validate_cloud_optimized_geotiff", "scene.classes.tif"),
                           ("validate_cloud_optimized_geotiff", "scene.probabilities.tif")):
        done = subprocess.run([QGIS_PYTHON, "-m", f"osgeo_utils.samples.{module}", str(out / target)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    # GDAL 3.6 warned on every open of a GeoPackage 1.4
    done = subprocess.run(["ogrinfo", "-ro", "-so", str(out / "scene.gpkg")], capture_output=True, text=True,
                          timeout=300, check=True)
    assert "warning" not in (done.stdout + done.stderr).lower()


PROCESSING_PROBE = Path(__file__).with_name("qgis_processing_probe.py")
GEOGLA = Path(sys.executable).with_name("geogla")  # the console script of this environment


def _processing(mode: str, scene: Path, out: Path, classes: str = "building,tree,road",
                extent: str = "") -> dict[str, Any]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1"}
    argv = [QGIS_PYTHON, str(PROCESSING_PROBE), mode, str(GEOGLA), str(scene), str(out), classes, extent]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, check=True)
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.skipif(not HAS_QGIS or not GEOGLA.exists(), reason="QGIS or the geogla command is absent")
def test_the_processing_algorithm_runs_geogla_and_loads_its_styled_outputs(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "scene.tif", structured_rgb(300, 420))
    report = _processing("run", scene, tmp_path / "out")
    assert report["algorithms"] == ["geogla:evaluate", "geogla:segmentraster"]
    assert report["result"]["CLASS_RASTER"] == str(tmp_path / "out" / "scene.classes.tif")
    # progress from geogla's lines, ending at 100%; the outputs in the project, styled
    assert 100.0 in report["percents"] and any("attend" in line for line in report["lines"])
    assert "scene classes" in report["layers"] and report["renderers"] == ["paletted"]
    assert set(report["layers"]) - {"scene classes"} <= {"building", "tree", "road"}


@pytest.mark.skipif(not HAS_QGIS or not GEOGLA.exists(), reason="QGIS or the geogla command is absent")
def test_the_processing_algorithm_segments_an_extent_given_in_another_crs(tmp_path: Path) -> None:
    """The area to segment, drawn on a map in longitude/latitude, reaches geogla as --bbox in the
    raster's CRS: the class raster covers the pixels under it."""
    from pyproj import Transformer

    scene = write_geotiff(tmp_path / "scene.tif", structured_rgb(300, 420))  # 0.5 m, origin 500000, 5000000
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    (lon0, lat0), (lon1, lat1) = (to_lonlat.transform(500020.0, 4999900.0),
                                  to_lonlat.transform(500120.0, 4999980.0))
    report = _processing("run", scene, tmp_path / "out", extent=f"{lon0},{lon1},{lat0},{lat1} [EPSG:4326]")
    assert "error" not in report, report
    with rasterio.open(tmp_path / "out" / "scene.classes.tif") as ds:
        left, bottom, right, top = ds.bounds
        # the box's UTM corners, grown to whole pixels by the reprojection's curvature at most a few
        assert 500015 <= left <= 500020 and 500120 <= right <= 500125
        assert 4999895 <= bottom <= 4999900 and 4999980 <= top <= 4999985
        assert ds.width < 420 and ds.height < 300


@pytest.mark.skipif(not HAS_QGIS or not GEOGLA.exists(), reason="QGIS or the geogla command is absent")
def test_the_processing_algorithm_cancels_and_reports_bad_input(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "scene.tif", structured_rgb(300, 420))
    cancelled = _processing("cancel", scene, tmp_path / "cancelled")
    assert cancelled["canceled"] and cancelled["result"] == {} and cancelled["layers"] == []
    assert not (tmp_path / "cancelled" / "scene.classes.tif").exists()
    # geogla's one sentence (exit code 2) is the algorithm's error; a blank class list is refused
    # before geogla runs
    twice = _processing("error", scene, tmp_path / "twice", "tree,tree")
    assert twice["error"] == "geogla: error: The class 'tree' is given twice in the class list."
    blank = _processing("error", scene, tmp_path / "blank", " ")
    assert "Give at least one class" in blank["error"] and blank["lines"] == []


@pytest.mark.skipif(not HAS_QGIS or not GEOGLA.exists(), reason="QGIS or the geogla command is absent")
def test_the_evaluate_algorithm_scores_a_benchmark_folder(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    report = _processing("evaluate", shared_data / "isprs_vaihingen", out)
    assert report["algorithms"] == ["geogla:evaluate", "geogla:segmentraster"]
    assert report["result"]["METRICS"] == str(out / "metrics.json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert "miou" in json.dumps(metrics).lower() and 100.0 in report["percents"]

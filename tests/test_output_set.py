"""A run's outputs are one set: a kill while they are rewritten for a new class list leaves the
previous set or, once committed, one that the next run finishes; never a class COG and a
GeoPackage of different class lists, and no temporary file after a successful run."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio

from geogla.cli import main
from geogla.publish import journal_path, output_set, recover
from geogla.stages import recover_outputs
from tests.conftest import structured_rgb, write_geotiff

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--model", "tiny", "--weights", "random", "-q"]
ROOT = Path(__file__).resolve().parents[1]

#: Runs ``geogla run`` with the arguments after the first and SIGKILLs itself where the first says:
#: "gpkg" once the new GeoPackage is written (before the set is committed), "publish" after the
#: first rename of a committed set.
KILLED_RUN = """
import os, signal, sys
import geogla.publish as publish
import geogla.stages.outputs as outputs
from geogla.cli import main

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "gpkg":
    write = outputs.write_geopackage
    def write_then_die(*args, **kwargs):
        write(*args, **kwargs)
        die()
    outputs.write_geopackage = write_then_die
else:
    def first_rename_then_die(moves, retired):
        os.replace(*moves[0])
        die()
    publish._apply = first_rename_then_die
main(sys.argv[2:])
"""


def _killed_run(where: str, args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, where, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr


def _classes(out: Path) -> dict[str, Any]:
    """The class lists that the class COG, the GeoPackage and the STAC item of ``out`` name."""
    with rasterio.open(out / "scene.classes.tif") as src:
        cog = json.loads(src.tags()["GEOGLA_CLASSES"])
    gpkg: set[str] = set()
    for layer, geometry in pyogrio.list_layers(out / "scene.gpkg"):
        if geometry is None:  # layer_styles
            continue
        frame = pyogrio.read_dataframe(out / "scene.gpkg", layer=layer, read_geometry=False)
        gpkg |= set(frame["class_name"])
    stac = json.loads((out / "scene.stac.json").read_text())["properties"]["geogla:classes"]
    return {"cog": cog, "gpkg": gpkg, "stac": stac}


def _hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def _assert_one_set(out: Path, names: list[str]) -> None:
    got = _classes(out)
    assert got["cog"] == names and got["stac"] == names, got
    assert got["gpkg"] and got["gpkg"] <= set(names), got  # classes present in the polygons


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A scene, an output folder of a finished run with classes building,tree, and one of an
    uninterrupted run with classes water,grass."""
    work = tmp_path_factory.mktemp("set")
    scene = write_geotiff(work / "scene.tif", structured_rgb(300, 420))
    first, second = work / "first", work / "second"
    assert main(["run", str(scene), "--classes", "building,tree", "-o", str(first), *TINY]) == 0
    assert main(["run", str(scene), "--classes", "water,grass", "-o", str(second), *TINY]) == 0
    return scene, first, second


def _assert_same_outputs(out: Path, reference: Path) -> None:
    with rasterio.open(out / "scene.classes.tif") as got, \
            rasterio.open(reference / "scene.classes.tif") as want:
        assert np.array_equal(got.read(1), want.read(1))
    layers = [pyogrio.list_layers(folder / "scene.gpkg").tolist() for folder in (out, reference)]
    assert layers[0] == layers[1]


def test_a_kill_before_the_commit_leaves_the_previous_set(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    scene, first, second = runs
    out = tmp_path / "out"
    shutil.copytree(first, out)
    args = ["run", str(scene), "--classes", "water,grass", "-o", str(out), *TINY]
    _killed_run("gpkg", args)
    _assert_one_set(out, ["building", "tree"])  # the new class COG was written, but not published
    assert main(args) == 0
    _assert_one_set(out, ["water", "grass"])
    _assert_same_outputs(out, second)
    assert _hidden(out) == []


def test_a_kill_while_publishing_is_finished_when_the_next_run_starts(
    runs: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scene, first, second = runs
    out = tmp_path / "out"
    shutil.copytree(first, out)
    _killed_run("publish", ["run", str(scene), "--classes", "water,grass", "-o", str(out), *TINY])
    assert journal_path(out, "scene").exists()  # committed: the class COG is new, the rest not yet
    with caplog.at_level(logging.WARNING, logger="geogla"):
        recover_outputs(out, "scene")
    assert "finished publishing" in caplog.text
    _assert_one_set(out, ["water", "grass"])
    _assert_same_outputs(out, second)
    assert _hidden(out) == []


def test_members_of_the_previous_set_that_the_new_one_lacks_are_removed(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    scene = runs[0]
    labels = write_geotiff(tmp_path / "labels.tif", np.zeros((300, 420), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["run", str(scene), "--classes", "building,tree", "-o", str(out), "--save-probabilities",
                 "--labels", str(labels), *TINY]) == 0
    assert (out / "scene.probabilities.tif").exists() and (out / "scene.metrics.json").exists()
    assert main(["run", str(scene), "--classes", "water,grass", "-o", str(out), *TINY]) == 0
    # metrics of building,tree and their probabilities would disagree with the new set
    assert not (out / "scene.probabilities.tif").exists() and not (out / "scene.metrics.json").exists()
    assert "probabilities" not in json.loads((out / "scene.stac.json").read_text())["assets"]
    _assert_one_set(out, ["water", "grass"])


def _members(folder: Path) -> list[Path]:
    return [folder / "a.tif", folder / "a.gpkg", folder / "a.json"]


def _publish(folder: Path, text: str, fail: bool = False) -> None:
    with output_set(journal_path(folder, "a"), _members(folder)) as pending:
        for final, temporary in pending.items():
            assert temporary.parent == folder and temporary.name.startswith(f".{final.name}.")
            temporary.write_text(text)
            if fail:
                raise KeyboardInterrupt


def test_an_error_before_the_commit_leaves_the_previous_set_and_no_temporary(tmp_path: Path) -> None:
    _publish(tmp_path, "old")
    with pytest.raises(KeyboardInterrupt):
        _publish(tmp_path, "new", fail=True)
    assert [p.read_text() for p in _members(tmp_path)] == ["old"] * 3
    assert _hidden(tmp_path) == []


def test_a_member_not_written_is_an_error_and_nothing_is_published(tmp_path: Path) -> None:
    _publish(tmp_path, "old")
    with pytest.raises(RuntimeError, match=r"a\.gpkg"), output_set(journal_path(tmp_path, "a"),
                                                                   _members(tmp_path)) as pending:
        pending[tmp_path / "a.tif"].write_text("new")
        pending[tmp_path / "a.json"].write_text("new")
    assert [p.read_text() for p in _members(tmp_path)] == ["old"] * 3
    assert _hidden(tmp_path) == []


def test_an_unreadable_journal_is_removed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(tmp_path, "old")
    journal_path(tmp_path, "a").write_text('{"moves": [["')
    (tmp_path / ".a.tif.0123456789ab.part.tif").write_text("litter")
    with caplog.at_level(logging.WARNING, logger="geogla"):
        assert recover(journal_path(tmp_path, "a"), _members(tmp_path)) is False
    assert "cannot be read" in caplog.text
    assert _hidden(tmp_path) == [] and [p.read_text() for p in _members(tmp_path)] == ["old"] * 3


def test_members_outside_the_journals_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="one folder"), output_set(
        journal_path(tmp_path, "a"), [tmp_path / "a.tif", tmp_path / "sub" / "a.json"]
    ):
        pass

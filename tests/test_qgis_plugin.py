"""The QGIS plugin's parts that need no QGIS: the command line it builds, its progress parsing,
cancelling a running command, and the zip it is installed from (qgis_plugin/)."""

from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path

from geogla.cli import build_parser, main
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "qgis_plugin"))

from geogla_qgis.command import eval_arguments, progress_percent, run, segment_arguments
from make_zip import package


def test_progress_lines_give_the_share_of_tasks_done() -> None:
    assert progress_percent("encode 3/10 | attend 1/10, 5.2 windows/s, left: attend ~1m [12s]") == 20.0
    assert progress_percent("attend 1/1, 7.5 windows/s [0s]") == 100.0
    assert progress_percent("run store /x/scene.zarr (new)") is None
    assert progress_percent("cog: /x/scene.classes.tif") is None
    assert progress_percent("[3/4] top_mosaic_09cm_area1: mIoU 12.3 (2.0 s/image)") == 75.0


def test_the_command_line_is_one_geogla_accepts(scene_tif: Path, tmp_path: Path) -> None:
    argv = segment_arguments("geogla", str(scene_tif), "building,(tree)", str(tmp_path / "out"), model="tiny",
                             weights="random", gsd=1.0, min_area=2.5, simplify=0.5, save_probabilities=True)
    assert argv[:2] == ["geogla", "run"] and argv[argv.index("--gsd") + 1] == "1.0"
    assert main([*argv[1:], "--dry-run"]) == 0
    assert "--min-area" not in segment_arguments("geogla", "s.tif", "a", "o", min_area=0.0)
    boxed = segment_arguments("geogla", str(scene_tif), "a,b", str(tmp_path / "box"), model="tiny",
                              weights="random", bbox=(500010.0, 4999900.0, 500100, 4999990.5))
    assert boxed[boxed.index("--bbox") + 1] == "500010.0,4999900.0,500100.0,4999990.5"
    assert main([*boxed[1:], "--dry-run"]) == 0


def test_the_evaluate_command_line_is_one_geogla_accepts(tmp_path: Path) -> None:
    argv = eval_arguments("geogla", "folder", str(tmp_path), str(tmp_path / "out"), split="val",
                          legend=str(tmp_path / "legend.yaml"), attention="gla", limit=2, model="tiny",
                          weights="random")
    assert argv[:3] == ["geogla", "eval", "folder"]
    assert argv[argv.index("--limit") + 1] == "2" and argv[argv.index("--split") + 1] == "val"
    parsed = build_parser().parse_args(argv[1:])
    assert (parsed.dataset, parsed.attention, parsed.limit, parsed.model) == ("folder", "gla", 2, "tiny")


def test_a_cancelled_command_stops_at_once_and_a_finished_one_reports_its_last_line() -> None:
    chatty = [sys.executable, "-c",
              "import sys, time\nprint('encode 1/4', flush=True)\ntime.sleep(60)"]
    seen: list[str] = []
    start = time.monotonic()
    outcome = run(chatty, seen.append, lambda: bool(seen))
    assert outcome.cancelled and seen == ["encode 1/4"] and time.monotonic() - start < 30
    failing = [sys.executable, "-c", "import sys\nprint('working')\nsys.exit('geogla: error: Bad input.')"]
    outcome = run(failing, seen.append, lambda: False)
    assert not outcome.cancelled and outcome.returncode == 1
    assert outcome.message == "geogla: error: Bad input."


def test_the_plugin_zip_holds_the_plugin_folder(tmp_path: Path) -> None:
    target = package(tmp_path)
    with zipfile.ZipFile(target) as zf:
        names = set(zf.namelist())
        metadata = zf.read("geogla_qgis/metadata.txt").decode()
    assert {"geogla_qgis/__init__.py", "geogla_qgis/provider.py", "geogla_qgis/algorithms.py",
            "geogla_qgis/command.py"} <= names
    assert "hasProcessingProvider=yes" in metadata and "qgisMinimumVersion=3.22" in metadata

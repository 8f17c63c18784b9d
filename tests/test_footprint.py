"""A run is planned before it starts: its store's size, the disk check, ``--dry-run`` and
``--compact``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import geogla
from geogla import cli
from geogla.pipelines import footprint as fpmod
from geogla.pipelines.footprint import used_bytes
from geogla.store import RunStore
from geogla.units import format_bytes, format_duration, format_elapsed
from tests.conftest import structured_rgb, write_geotiff

RUN = ["--weights", "random", "--model", "tiny", "--device", "cpu", "-q"]


def test_a_run_whose_store_cannot_fit_is_refused_before_anything_is_written(
    scene_tif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    free = 1000  # bytes: less than the run store of this scene
    monkeypatch.setattr(fpmod, "free_bytes", lambda path: free)
    out = tmp_path / "out"
    code = cli.main(["run", str(scene_tif), "--classes", "a,b", "-o", str(out), *RUN])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs" in lines[0] and "1000 B is free" in lines[0]
    assert "--stride" in lines[0] and "--store" in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_the_dry_run_writes_nothing_and_estimates_the_store_within_5_percent(tmp_path: Path) -> None:
    # 8 x 12 windows: scalable attention (a summary), as on any large scene
    scene = write_geotiff(tmp_path / "wide.tif", structured_rgb(1000, 1450))
    out = tmp_path / "out"
    plan = geogla.segment(scene, "a,b,c", out, model="tiny", weights="random", device="cpu", dry_run=True)
    assert not out.exists() and plan.outputs == {}
    fp = plan.footprint
    assert fp is not None and fp.algorithm == "scalable" and fp.windows == 8 * 12
    result = geogla.segment(scene, "a,b,c", out, model="tiny", weights="random", device="cpu")
    real = used_bytes(result.store_url)
    assert result.store_bytes == real
    assert abs(fp.store_bytes - real) <= 0.05 * real, (fp.store, real)
    # the window vectors are stored uncompressed: known to the byte
    vectors = sum(
        used_bytes(os.path.join(result.store_url, name))
        for name in ("keys", "key_scale", "values", "features")
    )
    assert vectors >= fp.store["keys"] + fp.store["values"] + fp.store["features"]


def test_dry_run_prints_the_plan(scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["run", str(scene_tif), "--classes", "a,b", "-o", str(out), "--dry-run", *RUN]) == 0
    printed = capsys.readouterr().out
    for word in ("windows    6,", "attention  exact", "run store", "outputs", "disk", "time"):
        assert word in printed
    assert not out.exists()


def test_a_resumed_store_counts_only_what_it_lacks(scene_tif: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    first = geogla.segment(scene_tif, "a,b", out, model="tiny", weights="random", device="cpu")
    assert first.footprint is not None
    # room for the outputs again, not for a second store
    room = first.footprint.output_bytes + first.footprint.store_bytes // 10
    monkeypatch.setattr(fpmod, "free_bytes", lambda path: room)
    again = geogla.segment(scene_tif, "c,d", out, model="tiny", weights="random", device="cpu")
    assert again.resumed


def test_compacting_keeps_what_other_classes_need(scene_tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run: dict[str, Any] = {"model": "tiny", "weights": "random", "device": "cpu"}
    first = geogla.segment(scene_tif, "a,b", out, compact=True, **run)
    store = RunStore.open(first.store_url)
    assert first.compacted and store.compacted
    assert "keys" not in store.group and "values" not in store.group
    assert first.store_bytes < 0.6 * (first.footprint.store_bytes if first.footprint else 0)
    features = store.read("features")
    # other classes: no encoding, no attention, the same features
    other = geogla.segment(scene_tif, "c,d,e", out, **run)
    assert other.resumed and "encode" not in other.timings and "attend" not in other.timings
    np.testing.assert_array_equal(RunStore.open(other.store_url).read("features"), features)
    assert RunStore.open(other.store_url).compacted
    # other attention settings: the windows are encoded again, as a fresh run would
    redone = geogla.segment(scene_tif, "a,b", out, smoothing=True, **run)
    fresh = geogla.segment(scene_tif, "a,b", tmp_path / "fresh", smoothing=True, **run)
    assert "encode" in redone.timings and not RunStore.open(redone.store_url).compacted
    np.testing.assert_array_equal(RunStore.open(redone.store_url).read("classes"),
                                  RunStore.open(fresh.store_url).read("classes"))


def test_sizes_and_durations_read_as_people_write_them() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(3.5 * 2**20) == "3.5 MiB"
    assert format_bytes(1.5 * 2**40) == "1.5 TiB"
    assert format_bytes(250 * 2**30) == "250 GiB"
    assert format_duration(20) == "<1m"
    assert format_duration(14 * 60 + 10) == "14m"
    assert format_duration(2 * 3600 + 5 * 60) == "2h05m"
    assert format_duration(130 * 3600) == "130h00m"
    assert format_elapsed(12.7) == "12s"
    assert format_elapsed(5 * 60 + 12) == "5m12s"
    assert format_elapsed(2 * 3600 + 5 * 60 + 59) == "2h05m"

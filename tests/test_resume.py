"""A run killed with SIGKILL mid-way resumes from its store: finished windows are not encoded
again, and the outputs equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from tests.conftest import REPO, structured_rgb, write_geotiff

ARGS = ["--classes", "building,tree,road", "--model", "tiny", "--weights", "random", "--attention", "proxyclip"]


def _geogla(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "geogla", "run", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _encoded(store: Path) -> np.ndarray | None:
    try:
        return np.asarray(zarr.open_group(store, mode="r")["windows/encoded"][:])
    except (FileNotFoundError, KeyError, ValueError, OSError):  # not created yet, or being written now
        return None


def _chunk_times(store: Path, batches: list[int]) -> dict[int, int]:
    """Modification times of the `keys` chunk files of the given encode batches."""
    return {b: (store / "keys" / "c" / str(b) / "0" / "0").stat().st_mtime_ns for b in batches}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "big.tif", structured_rgb(2400, 2400))
    reference = tmp_path / "reference"
    assert _geogla(str(scene), "-o", str(reference), *ARGS).wait(timeout=600) == 0

    out = tmp_path / "out"
    store = out / "big.zarr"
    proc = _geogla(str(scene), "-o", str(out), *ARGS)
    done_at_kill = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        encoded = _encoded(store)
        if encoded is not None and 8 * 3 <= encoded.sum() < encoded.size // 2:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_at_kill = encoded
            break
        time.sleep(0.02)
    assert done_at_kill is not None, "the run finished or never started before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "big.classes.tif").exists()

    # Batches whose done flag was set when the kill came; their chunks must not be written again.
    batches = [b for b in range(done_at_kill.size // 8) if done_at_kill[8 * b:8 * b + 8].all()]
    before = _chunk_times(store, batches)
    time.sleep(0.05)  # so that a rewrite would show a later modification time
    rerun = _geogla(str(scene), "-o", str(out), *ARGS)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode() if rerun.stderr else ""
    assert _chunk_times(store, batches) == before
    with rasterio.open(reference / "big.classes.tif") as a, rasterio.open(out / "big.classes.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))

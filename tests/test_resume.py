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

ARGS = ["--classes", "building,tree,road", "--model", "tiny", "--weights", "random"]


def _geogla(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "geogla", "run", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _flags(store: Path, name: str) -> np.ndarray | None:
    try:
        array = zarr.open_group(store, mode="r")[name]
        assert isinstance(array, zarr.Array)
        return np.asarray(array[:])
    except (FileNotFoundError, KeyError, ValueError, OSError):  # not created yet, or being written now
        return None


def _chunk_times(store: Path, array: str, batches: list[int]) -> dict[int, int]:
    """Modification times of the chunk (shard) files of ``array`` for the given encode batches."""
    return {b: (store / array / "c" / str(b) / "0" / "0").stat().st_mtime_ns for b in batches}


# Kill while encoding (ProxyCLIP: attention is quick) and while attending (GLA on a scene past the
# exact-attention threshold, so scalable attention streams batch by batch through the store).
STAGES = {
    "encode": (2400, ["--attention", "proxyclip"], "windows/encoded", "keys"),
    "attend": (1700, [], "windows/attended", "features"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigkill_mid_run_then_resume(tmp_path: Path, stage: str) -> None:
    side, extra, flags, array = STAGES[stage]
    scene = write_geotiff(tmp_path / "big.tif", structured_rgb(side, side))
    reference = tmp_path / "reference"
    assert _geogla(str(scene), "-o", str(reference), *ARGS, *extra).wait(timeout=600) == 0

    out = tmp_path / "out"
    store = out / "big.zarr"
    proc = _geogla(str(scene), "-o", str(out), *ARGS, *extra)
    done_at_kill = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        done = _flags(store, flags)
        if done is not None and 8 * 3 <= done.sum() < done.size // 2:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_at_kill = done
            break
        time.sleep(0.02)
    assert done_at_kill is not None, "the run finished or never started before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "big.classes.tif").exists()

    # Batches whose done flag was set when the kill came; their chunks must not be written again.
    batches = [b for b in range(done_at_kill.size // 8) if done_at_kill[8 * b:8 * b + 8].all()]
    before = _chunk_times(store, array, batches)
    time.sleep(0.05)  # so that a rewrite would show a later modification time
    rerun = _geogla(str(scene), "-o", str(out), *ARGS, *extra)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode() if rerun.stderr else ""
    assert _chunk_times(store, array, batches) == before
    with rasterio.open(reference / "big.classes.tif") as a, rasterio.open(out / "big.classes.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))

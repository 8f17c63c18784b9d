"""Runs on a real Dask cluster: multi-process workers on loopback, a run store on an S3-compatible
server (moto, started here on 127.0.0.1), a worker killed mid-run, the store lock, and the
decision to ask for GPUs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import psutil
import pytest
import rasterio
import s3fs
import zarr
from distributed import Client, LocalCluster

from geogla import stages
from geogla.classes import parse_classes
from geogla.cli import main
from geogla.errors import StoreError
from geogla.lock import LOCK_NAME, LockInfo, RunLock
from geogla.pipelines.run import (
    Progress,
    build_waves,
    encode_resources,
    gpu_resources,
    in_flight_limit,
    run_scene,
    scheduler_address,
)
from geogla.runconfig import RunConfig
from geogla.store import RunStore
from tests.conftest import S3_BUCKET, free_port, structured_rgb, write_geotiff

CLASSES = "building,tree,road"
TINY = ["--model", "tiny", "--weights", "random"]
CONFIG = RunConfig(classes=parse_classes(CLASSES), model="tiny", weights="random")
BUCKET = S3_BUCKET


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str) -> Iterator[LocalCluster]:
    """Two worker processes of one thread on loopback (started after the AWS variables are set)."""
    with dask.config.set({"distributed.worker.daemon": False}):
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                             dashboard_address="127.0.0.1:0")
    with local:
        yield local


@pytest.fixture(scope="module")
def cluster_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600 x 600 scene (25 windows, 4 encode batches) and its embedded run in ``reference/``."""
    root = tmp_path_factory.mktemp("cluster")
    scene = write_geotiff(root / "scene.tif", structured_rgb(600, 600, seed=3))
    run_scene(str(scene), str(root / "reference"), CONFIG)
    return scene


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        classes: np.ndarray = ds.read(1)
    return classes


# -- the run on a cluster ----------------------------------------------------------------------
@pytest.mark.slow
def test_cluster_run_with_s3_store_equals_embedded_run(
    cluster: LocalCluster, cluster_scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"s3://{BUCKET}/runs/scene.zarr"
    out = tmp_path / "out"
    code = main(["run", str(cluster_scene), "--classes", CLASSES, *TINY, "-o", str(out), "--store", url,
                 "--scheduler", cluster.scheduler_address])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Dask dashboard: http://127.0.0.1:" in err  # an information line (-q hides it)
    assert np.array_equal(_classes(out / "scene.classes.tif"), _classes(cluster_scene.parent / "reference" /
                                                                         "scene.classes.tif"))
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.exists(f"{BUCKET}/runs/scene.zarr/zarr.json")
    assert not fs.exists(f"{BUCKET}/runs/scene.zarr/{LOCK_NAME}")  # released
    # Each worker loaded the model at most once, however many tasks it ran.
    with Client(cluster.scheduler_address) as client:
        loads = client.run(lambda: stages.common._cached_model.cache_info().misses)
    assert loads and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1


@pytest.mark.slow
def test_worker_killed_mid_run_does_not_fail_the_run(cluster: LocalCluster, cluster_scene: Path,
                                                     tmp_path: Path) -> None:
    with Client(cluster.scheduler_address) as client:
        pids = client.run(os.getpid)
        assert len(pids) == 2
        victim = pids[min(pids)]
        killed: list[Progress] = []

        def kill_after_first_encodes(p: Progress) -> None:
            if not killed and p.done["encode"] >= 1:
                os.kill(victim, signal.SIGKILL)
                killed.append(
                    Progress(dict(p.done), dict(p.total), p.windows_done, p.windows_total, p.elapsed)
                )

        result = run_scene(str(cluster_scene), str(tmp_path / "out"), CONFIG, client=client,
                           progress=kill_after_first_encodes)
    assert killed, "no encode task finished"
    assert killed[0].done["encode"] < killed[0].total["encode"] or killed[0].done["attend"] == 0
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert np.array_equal(_classes(Path(result.outputs["cog"])),
                          _classes(cluster_scene.parent / "reference" / "scene.classes.tif"))


def test_scheduler_address_from_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert scheduler_address(None) is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://head:8786")
    assert scheduler_address(None) == "tcp://head:8786"
    assert scheduler_address("tcp://other:8786") == "tcp://other:8786"


def test_unreachable_scheduler_is_a_user_error(scene_tif: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["run", str(scene_tif), "--classes", CLASSES, *TINY, "-o", str(tmp_path / "out"),
                     "--scheduler", f"tcp://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("geogla: error: Cannot connect to the Dask scheduler at tcp://127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


# -- GPU resources -----------------------------------------------------------------------------
def test_gpu_resources_only_when_a_worker_advertises_one() -> None:
    def info(*resources: dict[str, float]) -> dict[str, object]:
        return {"workers": {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}}

    assert gpu_resources(info({}, {})) is None
    assert gpu_resources(info({"MEMORY": 8e9})) is None
    assert gpu_resources({"workers": {}}) is None
    assert gpu_resources(info({}, {"GPU": 1})) == {"GPU": 1}
    assert gpu_resources(info({"GPU": 2})) == {"GPU": 1}


def test_encode_tasks_ask_for_a_gpu_on_a_gpu_cluster(scene_tif: Path, tmp_path: Path) -> None:
    with (dask.config.set({"distributed.worker.daemon": False}),
          LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                       resources={"GPU": 1}) as gpu_cluster,
          Client(gpu_cluster) as client):
        resources = encode_resources(client)
        assert resources == {"GPU": 1}
        result = run_scene(str(scene_tif), str(tmp_path / "out"), CONFIG, client=client)
    store = RunStore.open(result.store_url)
    for task in (
        t for wave in build_waves(store, str(tmp_path / "out"), encode_resources=resources) for t in wave
    ):
        assert task.resources == ({"GPU": 1} if task.stage == "encode" else None), task.stage


def test_scheduler_holds_a_bounded_number_of_tasks(scene_tif: Path, tmp_path: Path) -> None:
    # The whole graph at once would cost scheduler memory growing with the scene.
    config = CONFIG.with_(batch_size=1)  # an encode task per window: more than the limit
    held: list[int] = []
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as local,
        Client(local) as client,
    ):
        limit = in_flight_limit(client)
        result = run_scene(str(scene_tif), str(tmp_path / "out"), config, client=client,
                           progress=lambda p: held.append(len(local.scheduler.tasks)))
    windows = len(RunStore.open(result.store_url).grid)
    assert limit == 2 and windows >= 3 * limit
    assert len(held) == windows + 5  # and text, summary, attend, stitch, outputs
    assert 1 <= max(held) <= 2 * limit, held  # finished tasks may still be on their way out
    assert Path(result.outputs["cog"]).is_file()


# -- the store lock ----------------------------------------------------------------------------
def _lock_bytes(pid: int, *, started: float, age: float = 0.0, hostname: str | None = None) -> bytes:
    return LockInfo(owner="someone", hostname=hostname or socket.gethostname(), pid=pid, started=started,
                    heartbeat=time.time() - age).to_bytes()


def test_second_acquisition_is_refused_until_released(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    store.mkdir()
    first, second = RunLock(str(store)), RunLock(str(store))
    first.acquire()
    try:
        with pytest.raises(
            StoreError, match=r"^The run store .* is in use by another run \(pid \d+ on .*\); wait"
        ) as e:
            second.acquire()
        assert str(e.value).count(". ") == 0 and str(e.value).endswith("if that run is gone.")
        assert json.loads((store / LOCK_NAME).read_bytes())["owner"] == first.owner
    finally:
        first.release()
    assert not (store / LOCK_NAME).exists()
    with second:
        assert second.held


def test_heartbeat_refreshes_the_lock(tmp_path: Path) -> None:
    lock = RunLock(str(tmp_path), interval=0.05)
    with lock:
        first = json.loads((tmp_path / LOCK_NAME).read_bytes())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / LOCK_NAME).read_bytes())["heartbeat"] > first
    assert not lock.lost


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = psutil.Process()
    # Dead owner on this host: taken over at once, whatever its heartbeat says.
    path.write_bytes(_lock_bytes(dead.pid, started=time.time()))
    with RunLock(str(tmp_path)) as lock:
        assert json.loads(path.read_bytes())["owner"] == lock.owner
    # A live process of this host with a fresh heartbeat holds it; one whose pid was reused does not.
    path.write_bytes(_lock_bytes(me.pid, started=me.create_time()))
    with pytest.raises(StoreError):
        RunLock(str(tmp_path)).acquire()
    path.write_bytes(_lock_bytes(me.pid, started=me.create_time() - 1000))
    with RunLock(str(tmp_path)):
        pass
    # Another host: only the heartbeat's age tells.
    path.write_bytes(_lock_bytes(dead.pid, started=0.0, hostname="elsewhere.invalid"))
    with pytest.raises(StoreError):
        RunLock(str(tmp_path)).acquire()
    path.write_bytes(_lock_bytes(dead.pid, started=0.0, hostname="elsewhere.invalid", age=120))
    with RunLock(str(tmp_path), timeout=60):
        pass
    assert not path.exists()


def test_lock_on_s3_is_refused_and_released(s3_endpoint: str) -> None:
    url = f"s3://{BUCKET}/locks/run.zarr"
    first, second = RunLock(url), RunLock(url)
    first.acquire()
    try:
        with pytest.raises(StoreError, match="in use by another run"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()
    assert not s3fs.S3FileSystem(skip_instance_cache=True).exists(f"{BUCKET}/locks/run.zarr/{LOCK_NAME}")


def test_run_on_a_locked_store_is_refused_before_it_changes_anything(
    scene_tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", str(scene_tif), "--classes", CLASSES, *TINY, "-o", str(out), "-q"]) == 0
    store = out / "scene.zarr"
    before = dict(zarr.open_group(store, mode="r").attrs["geogla"])  # type: ignore[arg-type]
    capsys.readouterr()
    with RunLock(str(store)):  # another run, alive, on this host
        # Other classes would reset the class arrays of a resumed store: refused before that happens.
        code = main(["run", str(scene_tif), "--classes", "water,field", *TINY, "-o", str(out), "-q"])
        err = capsys.readouterr().err
        assert code == 2
        assert "is in use by another run" in err and len(err.strip().splitlines()) == 1
        assert dict(zarr.open_group(store, mode="r").attrs["geogla"]) == before  # type: ignore[arg-type]


def _task_threads() -> tuple[int, int]:
    """In a task: the torch threads geogla sets, and the ones torch then uses."""
    import torch

    from geogla.pipelines.run import set_task_threads

    return set_task_threads(), torch.get_num_threads()


@pytest.mark.parametrize("task_threads", [1, 2])
def test_task_threads_times_torch_threads_fit_the_cores(task_threads: int) -> None:
    cores = len(os.sched_getaffinity(0))
    with LocalCluster(n_workers=1, threads_per_worker=task_threads, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as local, Client(local) as client:
        set_threads, used = client.submit(_task_threads, pure=False).result()
    assert set_threads == used == max(1, cores // task_threads)


@pytest.mark.slow
def test_scalable_runs_give_identical_rasters_wherever_they_run(tmp_path: Path) -> None:
    """Above the exact threshold (49 windows): embedded (torch on every core), two one-thread
    workers and one two-thread worker (one torch thread per task) give the same class raster."""
    scene = write_geotiff(tmp_path / "scene.tif", structured_rgb(896, 896, seed=4))
    embedded = run_scene(str(scene), str(tmp_path / "embedded"), CONFIG)
    assert stages.store_algorithm(RunStore.open(embedded.store_url, mode="r")) == "scalable"
    want = _classes(Path(embedded.outputs["cog"]))
    for workers, threads in ((2, 1), (1, 2)):
        out = tmp_path / f"{workers}x{threads}"
        with dask.config.set({"distributed.worker.daemon": False}), \
                LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                             dashboard_address="127.0.0.1:0") as local, Client(local) as client:
            result = run_scene(str(scene), str(out), CONFIG, client=client)
        assert np.array_equal(_classes(Path(result.outputs["cog"])), want), (workers, threads)

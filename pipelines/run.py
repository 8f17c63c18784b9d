"""The Dask graph of ``geogla run``: encode -> text -> attend -> stitch -> outputs.

The graph carries only the store URL, window ids and block ids; every task is a stage function
of :mod:`geogla.stages`, which reads from and writes to the run store.  By default the graph runs
on an embedded local cluster (one worker, threads in this process, so the models load once).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
from dask.delayed import Delayed, delayed
from distributed import Client, LocalCluster

from geogla import stages
from geogla.errors import OutputError
from geogla.runconfig import RunConfig
from geogla.scene import Scene, open_scene
from geogla.store import RunStore


@dataclass
class RunResult:
    """What a run produced and how long each kind of work took (seconds, summed over tasks)."""

    outputs: dict[str, str]
    store_url: str
    resumed: bool
    timings: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    valid_windows: int = 0


def _sum_timings(parts: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total


def build_graph(store: RunStore, out_dir: str, labels: str | None = None) -> Delayed:
    """The delayed graph of one run; computing it returns the list of every task's timings.

    With ``labels`` (a label raster of class ids) an evaluation task scores the class raster.
    """
    url = store.url
    encodes = [delayed(stages.encode_windows, pure=False)(url, ids, dask_key_name=f"encode-{k}")
               for k, ids in enumerate(stages.window_batches(store))]
    text = delayed(stages.embed_text, pure=False)(url, dask_key_name="text")
    attended = delayed(stages.attend_windows, pure=False)(url, text, *encodes, dask_key_name="attend")
    stitched = [delayed(stages.stitch_block, pure=False)(url, b, attended, dask_key_name=f"stitch-{b}")
                for b in range(len(store.blocks()))]
    outputs = delayed(stages.write_outputs, pure=False)(url, out_dir, *stitched, dask_key_name="outputs")
    tasks = [*encodes, text, attended, *stitched, outputs]
    if labels is not None:
        tasks.append(delayed(stages.evaluate, pure=False)(url, labels, out_dir, *stitched, dask_key_name="evaluate"))
    return delayed(list)(tasks, dask_key_name="run")


@contextmanager
def embedded_client() -> Iterator[Client]:
    """A local cluster inside this process: one worker, one task at a time (torch uses the cores)."""
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with dask.config.set({"distributed.worker.daemon": False}):
        # Any free port: distributed serves HTTP (health, dashboard) even when asked not to, and a fixed
        # port would clash with a cluster the user already runs.
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address="127.0.0.1:0")
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()


def run_graph(store: RunStore, out_dir: str, client: Client | None = None,
              labels: str | None = None) -> dict[str, float]:
    """Compute the run's graph on ``client`` (an embedded cluster when None); return summed timings."""
    graph = build_graph(store, out_dir, labels)
    if client is None:
        with embedded_client() as c:
            parts = c.compute(graph).result()
    else:
        parts = client.compute(graph).result()
    return _sum_timings(parts)


def timed_run(store: RunStore, out_dir: str, resumed: bool, client: Client | None = None,
              labels: str | None = None) -> RunResult:
    t0 = time.perf_counter()
    timings = run_graph(store, out_dir, client, labels)
    metrics = {k.removeprefix("metric:"): timings.pop(k) for k in list(timings) if k.startswith("metric:")}
    paths = stages.output_paths(out_dir, store.scene.stem)
    if labels is None:
        del paths["metrics"]
    if not store.config.save_probabilities:
        del paths["probabilities"]
    return RunResult(outputs={k: str(v) for k, v in paths.items()}, store_url=store.url, resumed=resumed,
                     timings=timings, wall=time.perf_counter() - t0, metrics=metrics,
                     valid_windows=int(store.read("windows/valid").sum()))


def run_scene(scene_path: str, out_dir: str, config: RunConfig, *, bands: list[int] | None = None,
              gsd: float | None = None, resize_long_side: int | None = None, store_url: str | None = None,
              overwrite: bool = False, client: Client | None = None, labels: str | None = None,
              on_start: Callable[[Scene], None] | None = None) -> RunResult:
    """Check everything a run needs, create (or resume) its store, and run it.

    Every check a user can fail (the scene, the weights, the output folder) happens before
    anything is written, so a user error leaves nothing behind.  ``on_start(scene)`` is called once
    they have passed, before the work starts.
    """
    scene = open_scene(scene_path, bands=bands, gsd=gsd, resize_long_side=resize_long_side)
    if labels is not None:
        stages.check_labels(labels, scene)
    c = config
    model = stages.load_model(c.model, c.weights, c.clip_weights, c.vfm_weights, c.device)
    ensure_writable_dir(out_dir)
    url = store_url or os.path.join(out_dir, f"{scene.stem}.zarr")
    store, resumed = RunStore.create_or_resume(
        url, scene, config, tokens=model.tokens_per_side(config.crop), key_dim=model.key_dim,
        value_dim=model.value_dim, embed_dim=model.embed_dim, overwrite=overwrite)
    if on_start is not None:
        on_start(scene)
    return timed_run(store, out_dir, resumed, client, labels)


def ensure_writable_dir(path: str) -> None:
    """Create ``path`` if needed and check that files can be written in it (:class:`OutputError`)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"The output folder {path} is a file.")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".geogla-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"The output folder {path} cannot be written: {exc.strerror or exc}.") from None

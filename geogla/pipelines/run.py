"""The Dask tasks of ``geogla run``: encode and text -> summary -> attend -> stitch -> outputs.

Tasks carry only the store URL, window ids and block ids; every task is a stage function
of :mod:`geogla.stages`, which reads from and writes to the run store.  By default they run
on an embedded local cluster (one worker, threads in this process, so the models load once); with
a scheduler address (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``) they run on that Dask cluster,
whose workers must reach the scene, the run store and the output folder by the same paths or URLs.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
from dask.base import tokenize
from distributed import Client, Future, LocalCluster, wait

from geogla import stages
from geogla.errors import (
    ConfigError,
    CorruptChunkError,
    LostStoreError,
    MissingStoreError,
    StoreError,
    first_line,
)
from geogla.lock import RunLock
from geogla.paths import absolute, is_url, make_output_dir
from geogla.pipelines.footprint import Footprint, check_disk, footprint, used_bytes
from geogla.pipelines.plan import RunPlan, plan_run
from geogla.runconfig import RunConfig
from geogla.scene import Scene
from geogla.stages import StageResult
from geogla.store import RunStore, is_damaged_chunk

log = logging.getLogger(__name__)


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
    footprint: Footprint | None = None  #: what the run was planned to take
    store_bytes: int = 0  #: what its run store takes at the end (0 for a remote store)
    compacted: bool = False  #: whether the run store was compacted (:meth:`RunStore.compact`)


@dataclass(frozen=True)
class Task:
    """One task of a run: its stage, the stage function and its arguments (a store URL and ids, never
    data), how many windows it encodes, and the worker resources it asks for."""

    stage: str
    name: str
    fn: Callable[..., StageResult]
    args: tuple[Any, ...]
    windows: int = 0
    resources: dict[str, float] | None = None


def build_waves(store: RunStore, out_dir: str, labels: str | None = None,
                encode_resources: dict[str, float] | None = None) -> list[list[Task]]:
    """The tasks of one run in waves: every task of a wave needs only the waves before it.

    Encode and text, then the summary, the attend tasks, the stitch tasks, the outputs and last,
    with ``labels`` (a label raster of class ids), the evaluation.  ``encode_resources``
    (e.g. ``{"GPU": 1}``, see :func:`encode_resources`) are the worker resources each encode task
    asks for.
    """
    url = store.url
    batches = stages.window_batches(store)
    first = [Task("encode", f"encode-{k}", stages.encode_windows, (url, ids), len(ids), encode_resources)
             for k, ids in enumerate(batches)]
    first.append(Task("text", "text", stages.embed_text, (url,)))
    waves = [
        first,
        [Task("summary", "summary", stages.summarize_keys, (url,))],
        [
            Task("attend", f"attend-{k}", stages.attend_batches, (url, part))
            for k, part in enumerate(attend_parts(store))
        ],
        [Task("stitch", f"stitch-{b}", stages.stitch_block, (url, b)) for b in range(store.block_count())],
        [Task("outputs", "outputs", stages.write_outputs, (url, out_dir))],
    ]
    if labels is not None:  # after the output set, which retires the metrics of the set before it
        waves.append([Task("evaluate", "evaluate", stages.evaluate_labels, (url, labels, out_dir))])
    return waves


def run_stage(fn: Callable[..., StageResult], *args: Any) -> StageResult:
    """Run one stage function, then give the memory it freed back to the operating system.

    Stages allocate and free large buffers (model activations, attention blocks, tiles); without
    this, glibc keeps the freed heap and a long run's resident memory creeps up with the number of
    tasks instead of staying at one task's peak.
    """
    set_task_threads()
    try:
        return fn(*args)
    finally:
        release_memory()


def set_task_threads() -> int:
    """Give torch, in this task, the cores of this process divided among the Dask worker's task
    threads (at least one each), and return that number; outside a worker, leave torch as it is.

    Each task thread runs torch's own thread pool: a worker with 4 task threads on 8 cores whose
    tasks each used 8 torch threads would run 32 threads on 8 cores, and attention's many small
    parallel operations slow down many times when the cores are oversubscribed.
    """
    import torch
    from distributed import get_worker

    try:
        task_threads = int(get_worker().state.nthreads)
    except ValueError:  # not inside a Dask task
        return int(torch.get_num_threads())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(task_threads, 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    It also makes allocations of 4 MiB or more always ``mmap``-ed, so that freeing them returns
    them at once (glibc otherwise raises that threshold after the first large free, and such
    buffers then fragment the heap).
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 4 * 2**20)
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - absent outside glibc (musl)
    except (OSError, AttributeError):
        return None
    return libc


def attend_parts(store: RunStore) -> list[list[int]]:
    """Encode batches grouped into attend tasks: all in one for exact attention (it needs every
    window at once), else about ``stages.ATTEND_TASK_WINDOWS`` windows per task."""
    n_batches = stages.batch_count(store)
    if stages.store_algorithm(store) == "exact":
        return [list(range(n_batches))]
    per_task = max(1, stages.ATTEND_TASK_WINDOWS // store.config.batch_size)
    return [list(range(b, min(b + per_task, n_batches))) for b in range(0, n_batches, per_task)]


@dataclass
class Progress:
    """How far a run is: tasks done (and done without being skipped) per stage, windows encoded,
    when each stage started and ended and the time since the run started (seconds), and the seconds
    each stage was planned to take (:attr:`geogla.pipelines.footprint.Footprint.seconds`; may be
    empty)."""

    done: dict[str, int]
    total: dict[str, int]
    windows_done: int
    windows_total: int
    elapsed: float
    skipped_windows: int = 0
    worked: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)

    def windows_per_second(self) -> float:
        worked = self.windows_done - self.skipped_windows
        return worked / self.elapsed if self.elapsed > 0 and worked > 0 else 0.0

    def seconds_left(self) -> dict[str, tuple[float, bool]]:
        """Estimated seconds left per unfinished stage, and whether the stage's own pace gave it.

        A stage that has finished tasks it did not skip goes at its own pace (its seconds so far per
        such task).  Before that, its planned seconds, scaled by how the stages measured so far
        compare with their plan.  Stages with neither are left out.
        """
        measured = planned = 0.0
        for stage, plan in self.planned.items():
            if stage in self.ended and self.worked.get(stage, 0):
                measured += self._stage_seconds(stage)
                planned += plan
        pace = measured / planned if planned > 0 else 1.0
        out: dict[str, tuple[float, bool]] = {}
        for stage, total in self.total.items():
            left = total - self.done[stage]
            if left <= 0:
                continue
            worked = self.worked.get(stage, 0)
            if worked and stage in self.started:
                out[stage] = (left * self._stage_seconds(stage) / worked, True)
            elif stage in self.planned:
                share = left / total
                out[stage] = (pace * self.planned[stage] * share, False)
        return out

    def _stage_seconds(self, stage: str) -> float:
        return max(self.ended.get(stage, self.elapsed) - self.started[stage], 0.0)


@contextmanager
def embedded_client() -> Iterator[Client]:
    """A local cluster inside this process: one worker, one task at a time (torch uses the cores)."""
    # A task's error reaches the caller with its own type (and the command's one sentence): the
    # worker's "Compute Failed" log and its stack are shown only with -v.
    level = logging.ERROR if logging.getLogger("geogla").isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(level)
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


#: The environment variable naming the scheduler when ``--scheduler`` is not given (Dask's own).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"


def scheduler_address(explicit: str | None = None) -> str | None:
    """The Dask scheduler to run on: ``explicit``, else ``$DASK_SCHEDULER_ADDRESS``, else None (embedded)."""
    return explicit or os.environ.get(SCHEDULER_ENV) or None


@contextmanager
def connect(address: str) -> Iterator[Client]:
    """A client of the running Dask scheduler at ``address`` (:class:`ConfigError` when unreachable)."""
    try:
        client = Client(address)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"Cannot connect to the Dask scheduler at {address}: {first_line(exc)}.") from None
    with client:
        log.info(dashboard_line(client, address))
        yield client


def dashboard_line(client: Client, address: str) -> str:
    """One line naming the dashboard of the cluster a run uses."""
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError):  # a scheduler serving no dashboard
        link = None
    return (
        f"Dask dashboard: {link} (scheduler {address})"
        if link
        else f"Dask scheduler {address} (no dashboard)"
    )


def gpu_resources(scheduler_info: dict[str, Any]) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a worker in ``scheduler_info`` (``Client.scheduler_info()``) advertises a
    ``GPU`` resource, else None: annotating tasks with a resource no worker has would stall them."""
    workers = scheduler_info.get("workers", {}).values()
    if any(float(w.get("resources", {}).get("GPU", 0)) >= 1 for w in workers):
        return {"GPU": 1}
    return None


def encode_resources(client: Client) -> dict[str, float] | None:
    """The resources encode tasks ask for on ``client``'s cluster (see :func:`gpu_resources`); decided
    from the workers connected when the run starts."""
    try:
        info = client.scheduler_info(n_workers=-1)  # every worker: some releases list only five by default
    except TypeError:  # a release before n_workers, which lists them all
        info = client.scheduler_info()
    return gpu_resources(dict(info))


def run_graph(
    store: RunStore,
    out_dir: str,
    client: Client | None = None,
    labels: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    planned: dict[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Compute the run's tasks on ``client`` (an embedded cluster when None); return the seconds
    per kind of work summed over the tasks, and the metrics the tasks measured.

    Waves (:func:`build_waves`) run one after the other, and inside a wave at most
    :func:`in_flight_limit` tasks are submitted at a time: the scheduler then holds a bounded
    number of tasks however large the scene (a whole graph at once costs about 0.2 GiB of
    scheduler state at 16k x 16k pixels, and grows with the scene).  Encode tasks ask for one
    ``GPU`` when the cluster's workers advertise that resource.  ``progress`` is called after
    every finished task and at least every :data:`HEARTBEAT` seconds; ``planned`` are the seconds
    each stage was planned to take (:attr:`Progress.planned`).
    """
    if client is None:
        with embedded_client() as c:
            return run_graph(store, out_dir, c, labels, progress, planned)
    waves = build_waves(store, out_dir, labels, encode_resources=encode_resources(client))
    token = tokenize(
        store.url, store.meta["fingerprints"], time.time_ns()
    )  # runs sharing a cluster never collide
    total = dict(Counter(t.stage for wave in waves for t in wave))
    state = Progress(done=dict.fromkeys(total, 0), total=total, windows_done=0,
                     windows_total=sum(t.windows for wave in waves for t in wave), elapsed=0.0,
                     worked=dict.fromkeys(total, 0), planned=dict(planned or {}))
    limit = _Limit(client)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    metrics: dict[str, float] = {}
    running: dict[Future[StageResult], Task] = {}
    try:
        for wave in waves:
            for stage in {t.stage for t in wave}:
                state.started[stage] = time.perf_counter() - t0
            for finished in _run_wave(client, wave, token, limit, running):
                state.elapsed = time.perf_counter() - t0
                if finished is not None:
                    task, part = finished
                    stages.add_seconds(timings, part)
                    metrics.update(part.metrics)
                    _advance(state, task, part)
                if progress is not None:
                    progress(state)
    except BaseException:
        client.cancel(list(running))  # a failed (or interrupted) run leaves no tasks behind on the cluster
        raise
    return timings, metrics


#: Seconds without a finished task after which the progress is reported anyway.
HEARTBEAT = 5.0


def _run_wave(client: Client, wave: list[Task], token: str, limit: _Limit,
              running: dict[Future[StageResult], Task]) -> Iterator[tuple[Task, StageResult] | None]:
    """Each task of ``wave`` and its result, as they finish, and None every :data:`HEARTBEAT`
    seconds without one; at most ``limit`` tasks in ``running`` at once.

    A task's error is raised here, with its own type.  Finished tasks are released at once, so that
    the scheduler forgets them.
    """
    pending = iter(wave)

    def fill() -> None:
        while len(running) < limit.value():
            task = next(pending, None)
            if task is None:
                return
            future = client.submit(run_stage, task.fn, *task.args, key=f"{task.name}-{token}",
                                   resources=task.resources, pure=False)
            running[future] = task

    fill()
    while running:
        try:
            done, _ = wait(list(running), timeout=HEARTBEAT, return_when="FIRST_COMPLETED")
        except TimeoutError:
            yield None
            continue
        for future in done:
            part = future.result()
            task = running.pop(future)
            future.release()
            yield task, part
        fill()


def in_flight_limit(client: Client) -> int:
    """Tasks submitted at a time on ``client``'s cluster: two per worker thread, so that no thread
    waits for its next task."""
    try:
        threads = int(sum(client.nthreads().values()))
    except (OSError, TimeoutError):
        threads = 1
    return max(2, 2 * threads)


class _Limit:
    """:func:`in_flight_limit`, asked again every ``refresh`` seconds: workers join and leave."""

    def __init__(self, client: Client, refresh: float = 10.0) -> None:
        self.client, self.refresh = client, refresh
        self.asked, self.limit = -math.inf, 2

    def value(self) -> int:
        if time.monotonic() - self.asked > self.refresh:
            self.limit, self.asked = in_flight_limit(self.client), time.monotonic()
        return self.limit


def _advance(state: Progress, task: Task, part: StageResult) -> None:
    state.done[task.stage] += 1
    state.windows_done += task.windows
    if part.skipped:
        state.skipped_windows += task.windows
    else:
        state.worked[task.stage] += 1
    if state.done[task.stage] == state.total[task.stage]:
        state.ended[task.stage] = state.elapsed


def timed_run(store: RunStore, out_dir: str, resumed: bool, client: Client | None = None,
              labels: str | None = None, progress: Callable[[Progress], None] | None = None,
              planned: dict[str, float] | None = None) -> RunResult:
    t0 = time.perf_counter()
    timings, metrics = run_graph(store, out_dir, client, labels, progress, planned)
    paths = stages.output_locations(out_dir, store.scene.stem)
    if labels is None:
        del paths["metrics"]
    if not store.config.save_probabilities:
        del paths["probabilities"]
    return RunResult(outputs={k: str(v) for k, v in paths.items()}, store_url=store.url, resumed=resumed,
                     timings=timings, wall=time.perf_counter() - t0, metrics=metrics,
                     valid_windows=int(store.read("windows/valid").sum()))


#: How many times one run makes damaged chunks again before it gives up (a disk that keeps
#: damaging what is written to it).
REPAIRS = 2


def _run_repairing(store: RunStore, out_dir: str, resumed: bool, client: Client | None,
                   labels: str | None, progress: Callable[[Progress], None] | None,
                   planned: dict[str, float]) -> RunResult:
    """:func:`timed_run`; when a stage reads a damaged chunk (:func:`geogla.store.is_damaged_chunk`),
    the whole store is verified, the done flags of what fails are cleared (one line each) and the
    run goes on, making those chunks again; at most :data:`REPAIRS` times."""
    for repairs in range(REPAIRS + 1):
        try:
            return timed_run(store, out_dir, resumed, client, labels, progress, planned)
        except MissingStoreError:
            raise LostStoreError(
                f"the run store {store.url} disappeared during the run (removed, or its storage "
                "unreachable): run the same command again to start it afresh.") from None
        except Exception as exc:
            if not is_damaged_chunk(exc):
                raise
            if repairs == REPAIRS:
                raise CorruptChunkError(
                    f"chunks of the run store {store.url} still fail their checksums after being made "
                    f"again {REPAIRS} times: its disk may be failing") from exc
            log.warning("run store %s: a stage read a damaged chunk (%s); checking the whole store",
                        store.url, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            notes = store.reset_lost_chunks(verify=True)
            if not notes:
                raise
            for note in notes:
                log.warning("run store %s: %s.", store.url, note)
    raise AssertionError("unreachable")


def run_scene(scene: str | os.PathLike[str] | Scene, out_dir: str | os.PathLike[str], config: RunConfig, *,
              bands: list[int] | None = None, gsd: float | None = None, resize_long_side: int | None = None,
              store_url: str | None = None, overwrite: bool = False, client: Client | None = None,
              labels: str | os.PathLike[str] | None = None, on_start: Callable[[Scene], None] | None = None,
              progress: Callable[[Progress], None] | None = None) -> RunResult:
    """Check everything a run needs (:func:`geogla.pipelines.plan.plan_run`), then run it
    (:func:`execute`); arguments as theirs."""
    plan = plan_run(scene, out_dir, config, bands=bands, gsd=gsd, resize_long_side=resize_long_side,
                    store_url=store_url, labels=labels)
    return execute(plan, overwrite=overwrite, client=client, on_start=on_start, progress=progress)


def execute(plan: RunPlan, *, overwrite: bool = False, client: Client | None = None, compact: bool = False,
            on_start: Callable[[Scene], None] | None = None,
            progress: Callable[[Progress], None] | None = None) -> RunResult:
    """Load the model, check the disk, create (or resume) the run store, lock it, and run its task
    waves; with ``compact``, compact the store at the end (:meth:`RunStore.compact`).

    ``client``: the Dask cluster (an embedded one when None).  The model's device and the free
    disk space (:func:`geogla.pipelines.footprint.check_disk`) are checked before anything is
    written; ``on_start(scene)`` is called once the store is created, before the work starts.
    A store another run is writing is refused with :class:`StoreError` (see
    :class:`geogla.lock.RunLock`); one made for another scene or encoder configuration unless
    ``overwrite``.
    """
    c, scene = plan.config, plan.scene
    model = stages.load_model(c.model, c.weights, c.clip_weights, c.vfm_weights, c.device, c.precision)
    log.info(
        "model %s on %s: %s",
        c.model,
        model.device,
        ", ".join(
            f"{'CLIP' if part == 'clip' else part.upper()} {source}" for part, source in model.weights.items()
        ),
    )
    dtype = str(model.dtype).removeprefix("torch.")
    planned = footprint(scene, c, model.store_dims(), model.device.type, dtype)
    check_disk(planned, plan.store_url, plan.out_dir)
    make_output_dir(plan.out_dir)
    out_dir, labels = plan.out_dir, plan.labels
    if client is not None:  # a cluster's workers may run in another folder
        out_dir = absolute(out_dir)
        if labels is not None:
            labels = absolute(labels)
    lock = RunLock(plan.store_url)
    try:
        if _is_run_store(plan.store_url):
            # Before resuming: a resume may reset arrays (or --overwrite delete a store) another run is using.
            lock.acquire(heartbeat=False)
        store, resumed = RunStore.create_or_resume(plan.store_url, scene, c, **model.store_dims(),
                                                   overwrite=overwrite)
        lock.acquire()  # takes a new store's lock, or re-takes it after --overwrite removed the old store
        log.info("run store %s (%s)", plan.store_url, "resumed" if resumed else "new")
        stages.recover_outputs(out_dir, scene.stem)  # one whole set in the folder before the run reads it
        if on_start is not None:
            on_start(scene)
        result = _run_repairing(store, out_dir, resumed, client, labels, progress, planned.seconds)
        if compact:
            store.compact()
    finally:
        lock.release()
    result.footprint, result.compacted = planned, store.compacted
    result.store_bytes = 0 if is_url(store.url) else used_bytes(store.url)  # without the lock's files
    return result


def dry_run(plan: RunPlan) -> RunResult:
    """What :func:`execute` would do for ``plan``, computed from the model's architecture alone (no
    weights loaded, nothing written): a result with no outputs and the :class:`Footprint`."""
    from geogla.models.factory import create_meta_model, resolve_device
    from geogla.precision import encoder_dtype

    c = plan.config
    device = resolve_device(c.device)
    dtype = str(encoder_dtype(c.precision, device)).removeprefix("torch.")
    planned = footprint(plan.scene, c, create_meta_model(c.model).store_dims(), device.type, dtype)
    return RunResult(outputs={}, store_url=plan.store_url, resumed=False, footprint=planned)


def _is_run_store(url: str) -> bool:
    """Whether ``url`` holds a geogla run store (one a run may be writing)."""
    try:
        RunStore.open(url, mode="r")
    except (StoreError, OSError, ValueError):
        return False
    return True

"""What a run will take, known before it starts: windows, tokens, attention, disk and time.

:func:`footprint` computes it from the scene's header, the run's configuration and the model's
dimensions (:meth:`geogla.models.SegmentationModel.store_dims`; the architecture alone gives them,
no weights).  :func:`check_disk` refuses a run whose run store and outputs do not fit on their
file systems, before anything is written; ``geogla run --dry-run`` prints the footprint and stops.

Times are not measured here: they come from the benchmark figures in :data:`STAGE_SECONDS`, measured
on this project's reference machine, and are only as good as this machine's likeness to it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from geogla.errors import DiskSpaceError
from geogla.paths import is_url
from geogla.runconfig import RunConfig
from geogla.scene import Scene
from geogla.store import StoreDims, planned_bytes
from geogla.units import format_bytes

#: Where :data:`STAGE_SECONDS` were measured.
REFERENCE_MACHINE = "2-core AMD EPYC CPU (AVX512-BF16), torch 2.15, benchmarks/bench_scaling.py, 2026-12"

#: Seconds per window of the encode, summary and attend stages and per megapixel (of the scene's
#: file grid) of the stitch and outputs stages, by model preset, device type and encoder dtype,
#: from ``benchmarks/bench_scaling.py`` (synthetic scenes, scalable attention; tiny at 4096 x 4096,
#: default at 2048 x 2048 pixels) on :data:`REFERENCE_MACHINE`: the seconds of a stage's tasks,
#: summed, divided by its windows or megapixels.  Tasks share that machine's two cores, so the sum
#: over stages came within 15% of the runs' wall time (start-up and waiting are the rest).
STAGE_SECONDS: dict[tuple[str, str, str], dict[str, float]] = {
    ("tiny", "cpu", "bfloat16"): {"encode": 0.0113, "summary": 0.0029, "attend": 0.1007, "stitch": 0.346,
                                   "outputs": 0.072},
    ("default", "cpu", "bfloat16"): {"encode": 0.769, "summary": 0.0228, "attend": 0.431, "stitch": 2.575,
                                      "outputs": 0.095},
}


@dataclass(frozen=True)
class Footprint:
    """What a run of one scene takes (see the module docstring).

    Attributes:
        windows: ``L``, every window of the grid (nodata ones included: unknown before reading).
        token_grid: ``(rows, cols)`` of key tokens per window.
        algorithm: how GLA attention will be computed (:func:`geogla.gla.choose_algorithm`).
        store: bytes of the finished run store by part (:func:`geogla.store.planned_bytes`).
        outputs: bytes of the outputs by file, upper bounds (uncompressed).
        seconds: estimated seconds per stage (:data:`STAGE_SECONDS`); empty where no figures exist
            for this model, device and dtype.
        pixels: ``(height, width)`` of the scene's file grid.
    """

    windows: int
    token_grid: tuple[int, int]
    algorithm: str
    store: dict[str, int]
    outputs: dict[str, int]
    pixels: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """``T = L N``: key tokens of the whole scene."""
        return self.windows * self.token_grid[0] * self.token_grid[1]

    @property
    def store_bytes(self) -> int:
        return sum(self.store.values())

    @property
    def output_bytes(self) -> int:
        return sum(self.outputs.values())

    @property
    def compacted_bytes(self) -> int:
        """The store after ``--compact`` (keys, values and the summary dropped)."""
        return self.store_bytes - self.store["keys"] - self.store["values"] - self.store["summary"]


def footprint(scene: Scene, config: RunConfig, dims: StoreDims, device: str = "cpu",
              encoder_dtype: str = "float32") -> Footprint:
    """The :class:`Footprint` of running ``config`` on ``scene`` with a model of ``dims``;
    ``device`` (``cpu``, ``cuda``) and ``encoder_dtype`` select the benchmark figures."""
    from geogla.gla import choose_algorithm
    from geogla.grid import WindowGrid

    grid = WindowGrid(*scene.work_shape, config.crop, config.stride, pad_to=dims["pad_to"])
    token_grid = grid.token_grid(dims["token_size"])
    algorithm = choose_algorithm(config.attention, len(grid) * math.prod(token_grid))
    height, width = scene.georef.shape
    pixels = height * width
    cog = pixels * 4 // 3  # one byte per pixel and the overviews, uncompressed
    outputs = {"cog": cog, "gpkg": cog}  # polygons: rarely larger than the raster they trace
    if config.save_probabilities:
        outputs["probabilities"] = len(config.classes) * cog
    figures = STAGE_SECONDS.get((config.model, device.split(":")[0], encoder_dtype), {})
    seconds = {}
    if figures:
        megapixels = pixels / 1e6
        seconds = {"encode": figures["encode"] * len(grid), "summary": figures["summary"] * len(grid),
                   "attend": figures["attend"] * len(grid), "stitch": figures["stitch"] * megapixels,
                   "outputs": figures["outputs"] * megapixels}
        if algorithm != "scalable":
            del seconds["summary"]
    return Footprint(windows=len(grid), token_grid=token_grid, algorithm=algorithm,
                     store=planned_bytes(scene, config, dims), outputs=outputs, pixels=(height, width),
                     seconds=seconds)


def free_bytes(path: str) -> int:
    """Free bytes, for this user, on the file system of ``path`` (an existing folder)."""
    return shutil.disk_usage(path).free


def used_bytes(path: str) -> int:
    """Bytes the files under ``path`` take (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while walking
    return total


def disk_needs(fp: Footprint, store_url: str, out_dir: str) -> list[DiskNeed]:
    """What the run store and the outputs need of each disk they go to, and its free space.

    A store being resumed counts only what it still lacks; a remote store (``s3://`` ...) is
    not counted.  Outputs to a URL are built in the temporary folder first, and count there.
    """
    wanted = [("outputs", tempfile.gettempdir() if is_url(out_dir) else out_dir, fp.output_bytes)]
    if not is_url(store_url) or store_url.startswith("file://"):
        path = store_url.removeprefix("file://")
        wanted.insert(0, ("run store", path, max(fp.store_bytes - used_bytes(path), 0)))
    disks: dict[int, DiskNeed] = {}
    for what, path, size in wanted:
        folder = _existing_folder(path)
        need = disks.setdefault(os.stat(folder).st_dev, DiskNeed(folder, free_bytes(folder)))
        need.size += size
        need.parts.append(f"{what} {format_bytes(size)}")
    return list(disks.values())


def check_disk(fp: Footprint, store_url: str, out_dir: str) -> None:
    """Refuse a run whose run store and outputs do not fit in the free space of their disks
    (:func:`disk_needs`): :class:`geogla.errors.DiskSpaceError` with one sentence saying what is
    needed, what is free and what would need less."""
    for need in disk_needs(fp, store_url, out_dir):
        if need.size > need.free:
            raise DiskSpaceError(
                f"This run needs {format_bytes(need.size)} on the disk of {need.folder} "
                f"({', '.join(need.parts)}) but only {format_bytes(need.free)} is free there; a larger "
                "--stride, a coarser --gsd, a lighter --model (tiny) or --store on a larger disk would "
                "need less (--dry-run shows the plan)."
            )


@dataclass
class DiskNeed:
    """Bytes a run needs on one disk (the folder it was measured at), by part, and its free bytes."""

    folder: str
    free: int
    size: int = 0
    parts: list[str] = field(default_factory=list)


def _existing_folder(path: str) -> str:
    """``path`` or its nearest existing parent folder."""
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current

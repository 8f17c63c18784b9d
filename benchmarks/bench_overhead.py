"""What a task costs apart from its own work, as the scene grows: no-op encoders, 16k to 65k pixels.

For each scene side (16,384, 32,768 and 65,536 pixels by default) it writes a sparse tiled
GeoTIFF (no pixel data on disk: every block reads as zeros), creates the run store of a default
`geogla run` of it with the tiny model and scalable attention, and marks every window encoded and
valid, as a run's encode stage leaves them.  Keys and values are written only around the tasks
timed (random unit keys), and the far summary is made from those windows (standing in for all
``L``: the summary's size does not depend on the scene).  Then it times, in this process, a few
tasks of each stage in the middle of the scene, with the encoders replaced by a no-op that
returns zeros: so what is timed is reading the pixels, the store's flags and windows, attention
and projection over the task's own windows, stitching and writing, the work that is the same for
a task wherever it is and however large the scene.  Reported per stage: the median seconds per
task, which must not grow with the scene; and, for scale, one read of the whole
``windows/valid`` array, which every attend and stitch task made before geogla 0.3.

    uv run python benchmarks/bench_overhead.py                       # ~3 min, ~1 GB of disk
    uv run python benchmarks/bench_overhead.py --sides 16384 32768 65536 131072
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from geogla import stages
from geogla.classes import parse_classes
from geogla.gla import GLAConfig
from geogla.gla.prototypes import summarize
from geogla.models import SegmentationModel
from geogla.pipelines.run import attend_parts
from geogla.runconfig import RunConfig
from geogla.scene import open_scene
from geogla.store import RunStore, quantize_keys


def sparse_scene(path: Path, side: int) -> None:
    """A ``side`` x ``side`` RGB GeoTIFF with no block written (GDAL reads them as zeros)."""
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5_100_000, 0.5, 0.5), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "YES",
               "SPARSE_OK": "TRUE"}
    with rasterio.open(path, "w", **profile):
        pass


def no_op_encoders(model: SegmentationModel) -> None:
    """Replace ``model.encode`` by one that returns zeros of the right shapes at once."""
    def encode(images: torch.Tensor, values_on_clip_grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = int(images.shape[2]), int(images.shape[3])
        keys = torch.zeros(images.shape[0], *model.token_grid(h, w), model.key_dim)
        rows, cols = model.clip.grid(h, w) if values_on_clip_grid else model.token_grid(h, w)
        values = torch.zeros(images.shape[0], rows * cols, model.value_dim)
        keys[..., 0] = 1.0  # unit keys
        return keys.flatten(1, 2), values

    model.encode = encode  # type: ignore[method-assign]


def prepared_store(work: Path, side: int, timed_windows: np.ndarray) -> RunStore:
    scene_path = work / f"scene_{side}.tif"
    sparse_scene(scene_path, side)
    scene = open_scene(str(scene_path))
    attention = GLAConfig(algorithm="scalable", precision="float32")
    config = RunConfig(classes=parse_classes("building,tree,road,water"), model="tiny", weights="random",
                       device="cpu", attention=attention)
    model = stages.load_model("tiny", "random", None, None, "cpu")
    store, _ = RunStore.create_or_resume(
        str(work / f"scene_{side}.zarr"), scene, config, **model.store_dims()
    )
    n_windows = len(store.grid)
    store.array("windows/valid")[:] = True  # as the encode stage leaves them: one chunk per batch
    store.array("windows/encoded")[:] = True
    # keys and values of the windows the timed tasks read (and their neighbours)
    rng = np.random.default_rng(0)
    for w in timed_windows.tolist():
        keys = rng.normal(size=store.array("keys").shape[1:])
        stored, scale = quantize_keys(
            keys / np.linalg.norm(keys, axis=-1, keepdims=True), store.array("keys").dtype
        )
        store.array("keys")[w], store.array("key_scale")[w] = stored, scale
        values = store.array("values")
        values[w] = rng.normal(size=values.shape[1:]).astype(values.dtype)
    source = stages.StoreWindows(store, timed_windows)
    sample = summarize(source, attention, torch.float32, torch.float32, torch.device("cpu"))
    sample = sample.renumbered(torch.arange(len(timed_windows)), torch.from_numpy(timed_windows))
    tensors = {k: v.numpy() for k, v in sample.to_tensors().items()}
    tensors["n_windows"] = np.asarray(n_windows)  # it stands for every window of the scene
    store.write_tensors("summary", tensors)
    store.mark_done("summary")
    stages.embed_text(store.url)
    return store


def median_seconds(calls: list[tuple], work: tuple[str, ...] = ()) -> tuple[float, float]:
    """Median wall seconds of the calls (stage functions), and median of the same less the
    seconds the stage reports for ``work`` (attention and projection: the task's own compute)."""
    totals, rest = [], []
    for fn, *args in calls:
        start = time.perf_counter()
        result = fn(*args)
        totals.append(time.perf_counter() - start)
        rest.append(totals[-1] - sum(result.seconds.get(key, 0.0) for key in work))
    return statistics.median(totals), statistics.median(rest)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--tasks", type=int, default=3, help="tasks timed per stage")
    parser.add_argument("--work", help="folder for the scenes and stores (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    no_op_encoders(stages.load_model("tiny", "random", None, None, "cpu"))
    print(
        f"{os.cpu_count()} cores, torch {torch.__version__}; tiny model, no-op encoders, scalable attention, "
        "batches of 8 windows, attend tasks of 64\n"
    )
    print("| side (px) | windows | encode task (s) | attend task (s) | of which outside attention (s) "
          "| stitch task (s) | one read of windows/valid (s) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for side in args.sides:
            work = Path(tmp) / str(side)
            work.mkdir()
            # the timed tasks: in the middle of the scene
            grid_cols = (side - 224 + 111) // 112 + 1
            n_windows = grid_cols * grid_cols
            middle_row = grid_cols // 2
            first = middle_row * grid_cols + grid_cols // 2
            batch0 = first // 8
            attend_batches = [list(range(b, b + 8)) for b in range(batch0, batch0 + 8 * args.tasks, 8)]
            own = np.arange(batch0 * 8, (batch0 + 8 * args.tasks) * 8)
            near = np.unique(
                np.concatenate([own + dr * grid_cols + dc for dr in range(-3, 4) for dc in range(-3, 4)])
            )
            store = prepared_store(work, side, near[(near >= 0) & (near < n_windows)])
            assert len(store.grid) == n_windows and len(attend_parts(store)[0]) == 8
            below = (
                (middle_row + 4) * grid_cols + grid_cols // 2
            ) // 8  # batches away from the attended ones
            encode = [(stages.encode_windows, store.url, list(range(b * 8, b * 8 + 8)))
                      for b in range(below, below + args.tasks)]
            # marked encoded above: clear their flags so that the tasks do their work
            for _, _, ids in encode:
                store.array("windows/encoded")[ids[0]:ids[-1] + 1] = False
            t_encode, _ = median_seconds(encode)
            t_attend, t_attend_rest = median_seconds(
                [(stages.attend_batches, store.url, part) for part in attend_batches],
                work=("attend", "project"),
            )
            # output blocks over the attended windows
            per_row, block = -(-side // store.config.block), store.config.block
            mid = (middle_row * 112 // block) * per_row + (grid_cols // 2) * 112 // block
            t_stitch, _ = median_seconds(
                [(stages.stitch_block, store.url, b) for b in range(mid, mid + args.tasks)]
            )
            start = time.perf_counter()
            store.read("windows/valid")
            t_valid = time.perf_counter() - start
            print(f"| {side:,} | {n_windows:,} | {t_encode:.3f} | {t_attend:.1f} | {t_attend_rest:.3f} | "
                  f"{t_stitch:.3f} | {t_valid:.2f} |", flush=True)
    print("\nMedian wall seconds per task (encoders: no-op): the same work per task at every size.  Outside "
          "attention: the attend task's time less the time its attention and projection report (reading "
          "flags, the summary and windows, writing features).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

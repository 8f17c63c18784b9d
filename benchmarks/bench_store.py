"""What the 16-bit run store changes: labels against a float32 store.

Three store formats: ``float32`` (keys, values and features; the reference), ``16-bit`` (the run
store's format: keys in 16-bit integers scaled per token, values and features in float16) and
``float16`` (everything in float16, to show why the keys are not).  Two tables, as Markdown:

1. Real rasters through the whole pipeline (``geogla.segment``) once per format with the same
   settings: the share of token labels (argmax of the stored features against the stored text
   embeddings, every valid window token) and of class-raster pixels (valid pixels) that differ
   from the float32 store's, and the store's bytes per window.  The encoders run in float32 so
   that the store is the only difference.  RANDOM weights by default: a numeric check, not a
   quality result; with near-tied random logits, labels are far more fragile than with real
   features.
2. Structured synthetic scenes (the ``standard`` and ``hard`` scenes of bench_scalable.py):
   attention on float32 keys and values against the same keys and values as each format stores
   them, the output rounded to float16 (as the stored features); changed token labels and
   stitched labels, for exact and scalable attention.

    uv run python benchmarks/bench_store.py                          # Koeln, default model, ~6 min
    uv run python benchmarks/bench_store.py --rasters A.tif,B.tif --model tiny --grids 4,8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scalable as scal

import geogla.store
from geogla import segment
from geogla.gla import GLAConfig, attend
from geogla.stages import store_algorithm
from geogla.store import RunStore, dequantize_keys, quantize_keys

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "geotiffs"
CLASSES = "building,tree|forest,road,water,field,grass,pavement"


@contextlib.contextmanager
def store_dtype(keys: type[np.generic], vectors: type[np.floating]) -> Iterator[None]:
    """Run stores created inside hold their keys as ``keys`` (an integer dtype: scaled per token)
    and their values and features as ``vectors``."""
    saved = geogla.store.KEY_DTYPE, geogla.store.VECTOR_DTYPE
    geogla.store.KEY_DTYPE, geogla.store.VECTOR_DTYPE = keys, vectors  # type: ignore[assignment]
    try:
        yield
    finally:
        geogla.store.KEY_DTYPE, geogla.store.VECTOR_DTYPE = saved


def token_labels(store: RunStore) -> np.ndarray:
    """Class of every valid window token: argmax over classes of the best cosine of the stored
    features with the class's stored prompt embeddings (synonyms: the best one)."""
    valid = store.read("windows/valid")
    features = store.read("features")[valid].astype(np.float32)
    text = store.read("text").astype(np.float32)
    groups = np.asarray(store.config.classes.prompt_class)  # which class each prompt belongs to
    scores = features @ text.T
    n_classes = len(store.config.classes)
    per_class = np.stack([scores[..., groups == c].max(axis=-1) for c in range(n_classes)], -1)
    return per_class.argmax(axis=-1)


def store_bytes_per_window(url: str, n_windows: int) -> float:
    names = ("keys", "key_scale", "values", "features")
    size = sum(f.stat().st_size for n in names for f in (Path(url) / n).rglob("*") if f.is_file())
    return size / n_windows


#: key dtype and value/feature dtype of each store format
FORMATS: dict[str, tuple[type[np.generic], type[np.floating]]] = {
    "float32": (np.float32, np.float32), "16-bit": (np.int16, np.float16), "float16": (np.float16, np.float16)
}


def real_rows(raster: Path, args: argparse.Namespace, tmp: str) -> list[dict[str, object]]:
    runs = {}
    for name, (keys, vectors) in FORMATS.items():
        out = os.path.join(tmp, f"{raster.stem}-{name}")
        with store_dtype(keys, vectors):
            result = segment(raster, CLASSES, out, model=args.model, weights="random", precision="float32",
                             algorithm=args.algorithm, device="cpu")
        store = RunStore.open(result.store_url, mode="r")
        with rasterio.open(result.outputs["cog"]) as src:
            classes = src.read(1)
        runs[name] = (store, classes, store_bytes_per_window(result.store_url, len(store.grid)))
    s32, c32, _ = runs["float32"]
    valid = c32 != 255
    rows: list[dict[str, object]] = []
    for name, (store, classes, size) in runs.items():
        rows.append({
            "format": name,
            "windows": len(store.grid),
            "algorithm": store_algorithm(store),
            "tokens": 100.0 * float((token_labels(s32) != token_labels(store)).mean()),
            "pixels": 100.0 * float((c32[valid] != classes[valid]).mean()),
            "mib": size / 2**20,
        })
    return rows


def as_stored(tensor: torch.Tensor, dtype: type[np.generic]) -> torch.Tensor:
    """``tensor`` (float32, ``(..., D)``) as a store of ``dtype`` gives it back."""
    if np.dtype(dtype).kind == "i":
        return torch.from_numpy(dequantize_keys(*quantize_keys(tensor.numpy(), dtype)))
    return torch.from_numpy(tensor.numpy().astype(dtype).astype(np.float32))


def synthetic_row(kind: str, grid: int, algorithm: str, args: argparse.Namespace) -> dict[str, float]:
    sc = scal.make_scene(kind, grid, args.side, args.dim, args.seed)
    cfg = GLAConfig(algorithm=algorithm)  # type: ignore[arg-type]
    full = attend(sc.keys, sc.values, cfg, offsets=sc.offsets)
    m32 = scal.labels(full, sc.class_vectors, sc.offsets, args.side)
    row: dict[str, float] = {"L": grid * grid}
    for name, (keys, vectors) in FORMATS.items():
        if name == "float32":
            continue
        out = attend(as_stored(sc.keys, keys), as_stored(sc.values, vectors), cfg, offsets=sc.offsets)
        m16 = scal.labels(as_stored(out, vectors), sc.class_vectors, sc.offsets, args.side)
        row[f"{name} tokens"] = 100.0 * float((m32.tokens != m16.tokens).float().mean())
        row[f"{name} scene"] = 100.0 * float((m32.scene != m16.scene).mean())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rasters", default=str(DATA / "openearthmap_koeln_50.tif"),
                        help="comma-separated rasters for the pipeline runs ('' skips)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--algorithm", default="auto", choices=("auto", "exact", "scalable"))
    parser.add_argument("--grids", default="6,8", help="windows per side of the synthetic scenes")
    parser.add_argument("--scenes", default="standard,hard")
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}\n")

    rasters = [Path(r) for r in args.rasters.split(",") if r.strip()]
    if rasters:
        print(f"Whole runs, model {args.model} with RANDOM weights, float32 encoders, classes {CLASSES}\n")
        print("| raster | windows | attention | store format | token labels changed % | pixels changed % "
              "| store MiB/window |")
        print("|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for raster in rasters:
                for r in real_rows(raster, args, tmp):
                    print(f"| {raster.name} | {r['windows']} | {r['algorithm']} | {r['format']} | "
                          f"{r['tokens']:.3f} | {r['pixels']:.3f} | {r['mib']:.2f} |", flush=True)
        print()

    grids = [int(g) for g in args.grids.split(",") if g.strip()]
    if grids:
        print(
            f"Structured synthetic scenes, N = {args.side**2}, D = {args.dim}: labels changed against "
            "float32 keys, values and output, % of tokens / of stitched labels\n"
        )
        print("| scene | L | attention | 16-bit (the store's format) | float16 |")
        print("|---|---|---|---|---|")
        for kind in args.scenes.split(","):
            for g in grids:
                for algorithm in ("exact", "scalable"):
                    r = synthetic_row(kind, g, algorithm, args)
                    print(
                        f"| {kind} | {r['L']:.0f} | {algorithm} | "
                        f"{r['16-bit tokens']:.3f} / {r['16-bit scene']:.3f} | "
                        f"{r['float16 tokens']:.3f} / {r['float16 scene']:.3f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How much a pixel's label depends on the extent processed around it (GLA's global attention).

GLA lets every window attend to the keys of every other window, so the label of a fixed area can
change when more scene is processed around it.  For a fixed area (one window), this benchmark
processes extents of 1 x 1, 3 x 3 and 7 x 7 windows at half-window stride centred on it (1x, 4x
and 16x its area) and reports the share of the area's labels that change against the 1x run and
between the 4x and 16x runs:

1. structured synthetic scenes (``benchmarks/bench_scalable.py``'s kinds; attention alone, labels
   = argmax against the class vectors, stitched on the token grid), exact attention at every
   extent and the algorithm ``auto`` picks (scalable above 41 windows), ProxyCLIP for reference
   (window by window: it cannot change), and GLA bounded to a context radius of 0 and 1 window
   strides (``GLAConfig.context_radius``, ``geogla run --context-radius``): with radius 0 a
   pixel's context is the windows that cover it, all inside the 4x extent, so 4x -> 16x must
   change nothing; with radius 1 the 4x extent lacks some of the centre's context, the 16x holds
   it all;
2. real rasters through ``geogla run`` (crops of the file aligned to the window grid, the model
   preset of ``--model``) with RANDOM weights: labels of random features, a measure of
   sensitivity, never of quality.

    uv run python benchmarks/bench_extent.py
    uv run python benchmarks/bench_extent.py --seeds 0,1,2 --rasters ""
    uv run python benchmarks/bench_extent.py --configs "radius 0,radius 1"
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scalable import _ints, labels, make_scene

from geogla.gla import GLAConfig, attend
from geogla.models.registry import get_preset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "geotiffs"
#: The sample rasters of at least 896 x 896 pixels (7 windows of 224 at stride 112).
RASTERS = [DATA / "openearthmap_koeln_50.tif"]
#: Windows per side of the extents: areas 1x, 4x and 16x the centre window's (half-window stride).
EXTENTS = (1, 3, 7)
#: The attention compared: name -> context radius in window strides (None: no radius).
CONFIGS: dict[str, int | None] = {"proxyclip": None, "exact": None, "auto": None,
                                  "radius 0": 0, "radius 1": 1}


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    return 100.0 * float((a != b).mean())


def _row(area: dict[int, np.ndarray], token: int) -> dict[str, float]:
    """The shares changed between extents; the last also ``token`` pixels in from the area's
    edges (query smoothing and the stitch's interpolation reach one token beyond a position)."""
    inner = slice(token, -token)
    return {"1x-4x": _changed(area[1], area[3]), "1x-16x": _changed(area[1], area[7]),
            "4x-16x": _changed(area[3], area[7]),
            "inner": _changed(area[3][inner, inner], area[7][inner, inner])}


def synthetic_row(kind: str, seed: int, side: int, dim: int, config: str) -> dict[str, float]:
    """Labels of the centre window's area for each extent, from one 7 x 7 scene."""
    big = EXTENTS[-1]
    sc = make_scene(kind, big, side, dim, seed)
    stride = side // 2
    centre = big // 2
    area: dict[int, np.ndarray] = {}
    for g in EXTENTS:
        first = centre - g // 2
        ids = [r * big + c for r in range(first, first + g) for c in range(first, first + g)]
        offsets = sc.offsets[ids] - sc.offsets[ids[0]]
        cfg = {"exact": GLAConfig(algorithm="exact"), "auto": GLAConfig(),
               "proxyclip": GLAConfig.proxyclip(), "radius 0": GLAConfig(context_radius=0),
               "radius 1": GLAConfig(context_radius=stride)}[config]
        out = attend(sc.keys[ids], sc.values[ids], cfg, offsets=offsets)
        scene = labels(out, sc.class_vectors, offsets, side).scene
        top = (centre - first) * stride
        area[g] = scene[top:top + side, top:top + side]
    return _row(area, 1)


def raster_row(path: Path, model: str, algorithm: Literal["exact", "auto"], context_radius: int | None,
               work: Path) -> dict[str, float]:
    """The centre window's labels from ``geogla run`` on crops of ``path`` of 1, 3 and 7 windows a side."""
    import geogla

    crop, stride = 224, 112
    big = (EXTENTS[-1] - 1) * stride + crop
    with rasterio.open(path) as src:
        if min(src.height, src.width) < big:
            raise SystemExit(f"{path.name} is smaller than {big} x {big} pixels")
        y0, x0 = (src.height - big) // 2 // stride * stride, (src.width - big) // 2 // stride * stride
        area: dict[int, np.ndarray] = {}
        for g in EXTENTS:
            size = (g - 1) * stride + crop
            shift = (big - size) // 2
            window = Window(x0 + shift, y0 + shift, size, size)
            profile = src.profile | {"width": size, "height": size, "transform": src.window_transform(window)}
            scene = work / f"{path.stem}_{g}.tif"
            with rasterio.open(scene, "w", **profile) as dst:
                dst.write(src.read(window=window))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                geogla.segment(scene, "building,tree,road,water,grass", work / f"out_{g}", model=model,
                               weights="random", crop=crop, stride=stride, algorithm=algorithm,
                               context_radius=context_radius, overwrite=True)
            with rasterio.open(work / f"out_{g}" / f"{scene.stem}.classes.tif") as out:
                centre = (size - crop) // 2
                area[g] = out.read(1, window=Window(centre, centre, crop, crop))
    return _row(area, get_preset(model).key_patch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="standard,context", help="synthetic scene kinds ('' skips)")
    parser.add_argument("--seeds", default="0,1,2", help="synthetic scene seeds")
    parser.add_argument("--side", type=int, default=28, help="tokens per window side")
    parser.add_argument("--dim", type=int, default=256, help="channels of the scenes that do not fix theirs")
    parser.add_argument("--rasters", default=",".join(str(p) for p in RASTERS), help="rasters ('' skips)")
    parser.add_argument("--model", default="tiny", help="model preset of the raster runs")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="attention compared")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs: {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}\n")
    print("Labels of a fixed area (one window) that change as the processed extent grows, "
          "% of its pixels\n")
    print("| input | attention | seed | 1x -> 4x | 1x -> 16x | 4x -> 16x | 4x -> 16x, 1 token in |")
    print("|---|---|---|---|---|---|---|")
    for kind in [k for k in args.scenes.split(",") if k]:
        for config in configs:
            for seed in _ints(args.seeds):
                r = synthetic_row(kind, seed, args.side, args.dim, config)
                print(f"| {kind} (synthetic) | {config} | {seed} | {r['1x-4x']:.2f} | {r['1x-16x']:.2f} | "
                      f"{r['4x-16x']:.2f} | {r['inner']:.2f} |", flush=True)
    for path in [Path(p) for p in args.rasters.split(",") if p]:
        for config in configs:
            if config == "proxyclip":
                continue
            algorithm: Literal["exact", "auto"] = "exact" if config == "exact" else "auto"
            with tempfile.TemporaryDirectory() as work:
                r = raster_row(path, args.model, algorithm, CONFIGS[config], Path(work))
            print(f"| {path.name} ({args.model}, RANDOM weights) | gla, {config} | - | {r['1x-4x']:.2f} | "
                  f"{r['1x-16x']:.2f} | {r['4x-16x']:.2f} | {r['inner']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the wall time of ``geogla run`` goes: the share spent outside the two image encoders.

Runs the whole pipeline (embedded Dask cluster, run store, COG, GeoPackage) on one scene with
RANDOM weights (same compute as real weights; the labels mean nothing) and prints the time of each
stage.  "Encoders" is the time inside ``model.encode`` (DINO keys + CLIP values) summed over
batches; everything else (reading, text embedding, attention, projection, stitching, store I/O,
COG, vectorizing, scheduling) is "outside".

    uv run python benchmarks/bench_run.py ../shared/data/geotiffs/openearthmap_koeln_50.tif
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import warnings

import torch

from geogla.classes import parse_classes
from geogla.gla import GLAConfig
from geogla.pipelines.run import run_scene
from geogla.runconfig import RunConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scene")
    p.add_argument("--classes", default="building,tree,road")
    p.add_argument("--model", default="default")
    p.add_argument("--attention", choices=("gla", "proxyclip"), default="gla")
    p.add_argument("--out", help="output folder (default: a temporary folder)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    attention = GLAConfig() if args.attention == "gla" else GLAConfig.proxyclip()
    config = RunConfig(
        classes=parse_classes(args.classes),
        model=args.model,
        weights="random",
        attention=attention,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run_scene(args.scene, args.out or tmp, config, overwrite=True)
    t = result.timings
    encoders = t.get("encode", 0.0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; model {args.model} with RANDOM weights; "
          f"attention {args.attention}")
    print(f"scene: {args.scene}")
    print(f"{'stage':<12} {'seconds':>9}")
    for k, v in sorted(t.items(), key=lambda kv: -kv[1]):
        print(f"{k:<12} {v:9.2f}")
    print(f"{'wall':<12} {result.wall:9.2f}")
    print(
        "share of wall time outside the two image encoders: "
        f"{100 * (result.wall - encoders) / result.wall:.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How `geogla run` scales with the scene: wall time, windows per second, peak resident memory and
the run store's size.

Generates synthetic RGB GeoTIFFs (2k, 4k, 8k, 16k pixels a side by default), written tile by tile
so that generating them needs no full-scene array either, and runs the real command on each in a
subprocess (embedded Dask cluster, run store, COG, GeoPackage). Peak memory is the child's own
maximum resident set size (``wait4``).  The run store's bytes are measured on disk at the end and
set against what ``geogla run --dry-run`` planned.  A second table gives each stage's seconds per
window (encode, summary, attend) or per megapixel (stitch, outputs): the figures
geogla.pipelines.footprint.STAGE_SECONDS holds.  RANDOM weights: the figures measure speed, memory
and disk, never quality.

    uv run python benchmarks/bench_scaling.py                        # tiny model, 2k..16k
    uv run python benchmarks/bench_scaling.py --model default --sizes 1024 2048
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
TILE = 512


def synthetic_tile(y0: int, x0: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Deterministic RGB pixels of a landscape-like scene: smooth regions of a few land covers with
    texture, the same wherever a tile is cut (a function of absolute pixel position only)."""
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float64)
    # Low-frequency fields decide the cover; sums of sines keep it stateless and tileable.
    f1 = np.sin(yy / 173.0 + 1.3) + np.sin(xx / 211.0) + 0.5 * np.sin((xx + yy) / 97.0 + seed)
    f2 = np.sin(xx / 131.0 + 0.7) * np.cos(yy / 157.0)
    cover = (f1 > 0.4).astype(np.int64) + 2 * (f2 > 0.3).astype(np.int64)
    palette = np.array([[90, 140, 60], [150, 150, 150], [40, 90, 40], [200, 180, 120]], dtype=np.float64)
    rgb = palette[cover]
    texture = 12 * np.sin(xx * 0.9 + yy * 1.7) + 8 * np.cos(xx * 2.3 - yy * 0.7)
    return np.clip(rgb + texture[..., None], 0, 255).astype(np.uint8).transpose(2, 0, 1)


def make_scene(path: Path, side: int) -> None:
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5_100_000, 0.5, 0.5), "tiled": True,
               "blockxsize": TILE, "blockysize": TILE, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, side, TILE):
            for x in range(0, side, TILE):
                h, w = min(TILE, side - y), min(TILE, side - x)
                dst.write(synthetic_tile(y, x, h, w), window=Window(x, y, w, h))


def windows_for(side: int, crop: int = 224, stride: int = 112) -> int:
    per_side = max(side - crop + stride - 1, 0) // stride + 1
    return per_side * per_side


def command(scene: Path, out: Path, model: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "geogla", "run", str(scene), "--classes", "building,tree,road,water",
            "-o", str(out), "--model", model, "--weights", "random", "--quiet", *extra]


def run_one(scene: Path, out: Path, model: str, extra: list[str]) -> tuple[float, float, float, int, str]:
    """Wall seconds, CPU seconds (user + system), peak RSS in GiB, exit code and standard error of
    one `geogla run` in a child process.  CPU time is the steadier measure on a machine shared
    with other work."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command(scene, out, model, extra), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().decode()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(stderr[-2000:])
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss / 2**20, code, stderr  # ru_maxrss is in KiB on Linux


def planned_store_bytes(scene: Path, out: Path, model: str, extra: list[str]) -> int:
    """The run store's bytes as `geogla run --dry-run` plans them."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    text = subprocess.run([*command(scene, out, model, extra), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True).stdout
    match = re.search(r"^run store  ([0-9.]+) (B|KiB|MiB|GiB|TiB)", text, re.MULTILINE)
    assert match, text
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
    return int(float(match.group(1)) * units[match.group(2)])


def stage_seconds(stderr: str) -> dict[str, float]:
    """Seconds per kind of work from the run's last line, ``done in 12.3s (attend 1.2s, ...)``."""
    match = re.search(r"done in [0-9.]+s \((.*)\)", stderr)
    if not match:
        return {}
    return {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+)s", match.group(1))}


def used_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--model", default="tiny")
    p.add_argument("--work", help="folder for scenes and outputs (default: a temporary folder, removed)")
    p.add_argument("extra", nargs="*", help="further `geogla run` options, after --")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="geogla-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; model {args.model} with RANDOM weights; "
          f"options {' '.join(args.extra) or '(defaults)'}")
    print("| side (px) | windows | wall (s) | CPU (s) | windows/s | peak RSS (GiB) | store MiB/window "
          "| store: planned / measured |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    per_stage = []
    try:
        for side in args.sizes:
            scene = work / f"synthetic_{side}.tif"
            if not scene.exists():
                make_scene(scene, side)
            out = work / f"out_{side}"
            shutil.rmtree(out, ignore_errors=True)
            planned = planned_store_bytes(scene, out, args.model, args.extra)
            wall, cpu, rss, code, stderr = run_one(scene, out, args.model, args.extra)
            n = windows_for(side)
            store = used_bytes(out / f"{scene.stem}.zarr")
            rows.append((side, n, wall, cpu, rss))
            per_stage.append((side, n, stage_seconds(stderr)))
            status = "" if code == 0 else f" (exit {code})"
            print(
                f"| {side} | {n} | {wall:.1f}{status} | {cpu:.1f} | {n / wall:.2f} | {rss:.2f} | "
                f"{store / n / 2**20:.2f} | {planned / store:.3f} |", flush=True
            )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\nSeconds per window (encode: read + encode; attend: attend + project + its reads and writes) and "
          "per megapixel (stitch; outputs: COG + polygons)\n")
    print("| side (px) | encode | summary | attend | stitch | outputs |")
    print("|---|---|---|---|---|---|")
    for side, n, sec in per_stage:
        mp = side * side / 1e6
        enc = (sec.get("read", 0) + sec.get("encode", 0)) / n
        att = (sec.get("attend", 0) + sec.get("project", 0) + sec.get("attend_io", 0)) / n
        out_s = (sec.get("cog", 0) + sec.get("vectorize", 0)) / mp
        print(f"| {side} | {enc:.4f} | {sec.get('summary', 0) / n:.4f} | {att:.4f} | "
              f"{sec.get('stitch', 0) / mp:.3f} | {out_s:.3f} |")
    if len(rows) >= 2:
        # The measure: the slope between the 4k scene (or the smallest) and the largest.
        s0, n0, w0, c0, _ = next((r for r in rows if r[0] >= 4096 and r is not rows[-1]), rows[0])
        s1, n1, w1, c1, _ = rows[-1]
        print(
            f"log-log slope against windows, {s0} -> {s1}: "
            f"wall time {math.log(w1 / w0) / math.log(n1 / n0):.2f}, "
            f"CPU time {math.log(c1 / c0) / math.log(n1 / n0):.2f}"
        )
        print(f"peak RSS at {rows[-1][0]} / at {rows[0][0]}: {rows[-1][4] / rows[0][4]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

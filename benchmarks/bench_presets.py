"""Speed and memory of each model preset: seconds per window of the encoders and peak resident memory.

Each preset runs in its own child process (so that its peak memory is its own, read with
``wait4``): it builds the preset with RANDOM weights (the same compute as real weights; nothing
here measures quality), reads ``--batch`` windows at the preset's crop from a scene (or makes
synthetic ones), encodes the batch once to warm up, then times ``--repeats`` encodes of it
(keys + values, ``SegmentationModel.encode``) and one projection of the values.  Prints a
Markdown table.

    uv run python benchmarks/bench_presets.py --scene ../shared/data/geotiffs/openearthmap_koeln_50.tif
    uv run python benchmarks/bench_presets.py --presets default clearclip-b16 --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


def windows(scene: str | None, crop: int, stride: int, count: int) -> tuple[object, str]:
    """``count`` RGB windows in [0, 1] as a (count, 3, crop, crop) tensor, and where they came from."""
    import torch

    if scene is None:
        g = torch.Generator().manual_seed(0)
        return torch.rand(count, 3, crop, crop, generator=g), "synthetic"
    from geogla.grid import WindowGrid
    from geogla.scene import SceneReader, open_scene

    sc = open_scene(scene)
    grid = WindowGrid(*sc.work_shape, crop, stride)
    boxes = grid.boxes()[:count]
    with SceneReader(sc) as reader:
        rgb = [torch.from_numpy(reader.read((int(y1), int(x1), int(y2), int(x2)))[0])
               for y1, x1, y2, x2 in boxes]
    while len(rgb) < count:  # a scene with fewer windows: repeat them
        rgb.append(rgb[len(rgb) % len(boxes)])
    return torch.stack(rgb), f"{Path(scene).name} ({len(grid)} windows)"


def child(args: argparse.Namespace) -> int:
    """Measure one preset; print one JSON line."""
    import torch

    from geogla.models import create_model, get_preset

    warnings.simplefilter("ignore")
    preset = get_preset(args.child)
    t0 = time.perf_counter()
    model = create_model(preset, weights="random", device="cpu")
    build = time.perf_counter() - t0
    batch, source = windows(args.scene, preset.crop, preset.stride, args.batch)
    assert isinstance(batch, torch.Tensor)
    model.encode(batch)  # warm-up at the timed shape: first-call allocations and kernel selection
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        _, values = model.encode(batch)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.project(values)
    project = time.perf_counter() - t
    n = model.token_grid(preset.crop, preset.crop)[0]
    print(json.dumps({"preset": preset.name, "build_s": build, "encode_s": min(times) / args.batch,
                      "project_s": project / args.batch, "tokens": n, "key_dim": model.key_dim,
                      "value_dim": model.value_dim, "source": source, "threads": torch.get_num_threads()}))
    return 0


def measure(preset: str, args: argparse.Namespace) -> tuple[dict[str, object] | None, float, str]:
    """Run the child for ``preset``: its result, its peak RSS in GiB, and its stderr tail on failure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", preset, "--batch", str(args.batch),
           "--repeats", str(args.repeats)]
    if args.scene:
        cmd += ["--scene", str(Path(args.scene).resolve())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # Files, not pipes: the child's own peak RSS comes from wait4, which must reap it before any
    # reading, and a full pipe would block it.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    rss = usage.ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return None, rss, tail[:200]
    return json.loads(lines[-1]), rss, ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", help="presets to measure (default: all but tiny)")
    p.add_argument("--scene", help="read the windows from this raster (default: synthetic windows)")
    p.add_argument("--batch", type=int, default=4, help="windows per timed encode (default 4)")
    p.add_argument("--repeats", type=int, default=1, help="timed encodes; the fastest counts (default 1)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    from geogla.models import list_presets

    presets = args.presets or [n for n in list_presets() if n != "tiny"]
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}; RANDOM weights (speed and memory only, never quality); batch {args.batch}, "
          f"best of {args.repeats}")
    print("| preset | grid | encode (s/window) | project (s/window) | build (s) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|")
    source = ""
    for name in presets:
        result, rss, error = measure(name, args)
        if result is None:
            print(f"| {name} | failed: {error} | | | | {rss:.2f} |", flush=True)
            continue
        source = str(result["source"])
        n = result["tokens"]
        print(f"| {name} | {n}x{n} | {result['encode_s']:.2f} | {result['project_s']:.3f} | "
              f"{result['build_s']:.1f} | {rss:.2f} |", flush=True)
    print(f"windows: {source or 'none measured'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

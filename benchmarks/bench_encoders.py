"""Speed and numeric effect of the encoders' precision (``--precision``), with RANDOM weights.

For each option: float32, bfloat16 and float16 weights (what ``create_model(precision=...)``
does), and float32 weights under ``torch.autocast(bfloat16)`` for comparison, it times the two image
encoders on a batch of windows (best of ``--repeats`` after a warm-up) and compares their outputs
with float32 on windows of a real raster: the relative error of the keys and of the values, and,
after exact GLA attention over a block of windows and CLIP's projection, of the features and the
share of token labels that change.  Random weights cost the same as real ones, so the speeds hold;
the errors are a numeric check, not a quality result.

    uv run python benchmarks/bench_encoders.py ../shared/data/geotiffs/openearthmap_koeln_50.tif
    uv run python benchmarks/bench_encoders.py SCENE --model default --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from geogla.gla import GLAConfig, attend
from geogla.grid import WindowGrid
from geogla.models import SegmentationModel, create_model
from geogla.scene import SceneReader, open_scene

OEM_CLASSES = ["bareland", "grass", "pavement", "road", "tree", "water", "cropland", "building"]
OPTIONS = ("float32", "bfloat16", "float16", "autocast-bfloat16")


def windows(
    scene_path: str, count: int, model: SegmentationModel
) -> tuple[torch.Tensor, torch.Tensor, WindowGrid]:
    """The first ``count`` canvases of the scene's default grid, and the offsets of its first 3 x 3
    block of windows (for attention)."""
    scene = open_scene(scene_path)
    preset = model.preset
    grid = preset.window_grid(*scene.work_shape, preset.crop, preset.stride)
    canvas = grid.canvas
    with SceneReader(scene) as reader:
        images = [
            canvas.place(*reader.read(grid.window(k)), model.pad_colour) for k in range(min(count, len(grid)))
        ]
    block = [r * grid.cols + c for r in range(3) for c in range(3)]
    offsets = torch.from_numpy(grid.token_offsets(preset.key_patch)[block])
    return torch.from_numpy(np.stack(images)), offsets, grid


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: kernels chosen, caches filled
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median over tokens of |a - b| / |b| (per-token vector norms)."""
    return float(((a.float() - b.float()).norm(dim=-1) / b.float().norm(dim=-1).clamp_min(1e-12)).median())


@contextlib.contextmanager
def maybe_autocast(option: str, device: torch.device) -> Iterator[None]:
    if option.startswith("autocast"):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scene")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="windows per timed encode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--options", nargs="*", default=list(OPTIONS))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    rows = []
    reference: dict[str, torch.Tensor] = {}
    for option in args.options:
        precision = "float32" if option.startswith("autocast") else option
        model = create_model(args.model, weights="random", device=device, precision=precision)
        images, offsets, _ = windows(args.scene, max(args.batch, 9), model)
        batch = images[: args.batch].to(device)
        with torch.inference_mode(), maybe_autocast(option, device):
            assert model.vfm is not None
            vfm_s = best_seconds(partial(model.encode_keys, batch), args.repeats) / args.batch
            clip_s = best_seconds(partial(model.encode_values, batch), args.repeats) / args.batch
            keys, values = model.encode(images[:9].to(device))
        with torch.inference_mode():
            attended = attend(keys.float(), values.float(), GLAConfig(algorithm="exact", precision="float32"),
                              offsets=offsets.to(device))
            features = F.normalize(model.project(attended), dim=-1)
            text = F.normalize(model.embed_text(OEM_CLASSES).float(), dim=-1)
            labels = (features @ text.T).argmax(dim=-1)
        row = {"option": option, "vfm_s": vfm_s, "clip_s": clip_s, "windows_per_s": 1 / (vfm_s + clip_s)}
        if option == "float32":
            reference = {"keys": keys, "values": values, "features": features, "labels": labels}
        elif reference:
            row.update(keys=relative_error(keys, reference["keys"]),
                       values=relative_error(values, reference["values"]),
                       features=relative_error(features, reference["features"]),
                       labels=float((labels != reference["labels"]).float().mean()))
        rows.append(row)
        print(row, flush=True)
        del model
    base = next((r for r in rows if r["option"] == "float32"), None)
    print(f"\n{args.model} on {device} ({torch.get_num_threads()} threads, torch {torch.__version__}), "
          f"batches of {args.batch}, random weights")
    print("| precision | VFM (s/window) | CLIP (s/window) | windows/s | speed-up | keys | values | features "
          "| labels changed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['windows_per_s'] / base['windows_per_s']:.2f}x" if base else "-"
        errs = " | ".join(f"{r[k]:.2e}" if k in r else "-" for k in ("keys", "values", "features"))
        changed = f"{100 * r['labels']:.2f}%" if "labels" in r else "-"
        print(
            f"| {r['option']} | {r['vfm_s']:.3f} | {r['clip_s']:.3f} | {r['windows_per_s']:.2f} | {speed} | "
            f"{errs} | {changed} |"
        )
    print("\nErrors: median relative error per token against float32; labels: token labels after exact GLA "
          "attention over a 3 x 3 block of windows (random weights: a numeric check, not quality).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

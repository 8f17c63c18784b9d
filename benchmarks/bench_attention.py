"""Speed of geogla.gla.attend against its lower bound: six plain T x T x D matrix products.

The exact algorithm needs three similarity products (two proxy rounds and the final S) and three
aggregations (two proxy means as 0/1 mask @ K, and A @ V), each ``(T x D) @ (D x T)``-sized.
This script times six plain ``torch.matmul`` calls of that shape and ``attend`` with
``GLAConfig()`` in float32 and in bfloat16, in one process, interleaved (the machine may be
shared: each repeat times both, and the ratio is the median of the per-repeat ratios), and
prints a table.  It also times the ProxyCLIP baseline and checks how many labels bfloat16 changes.

    uv run python benchmarks/bench_attention.py            # L = 9, N = 784, D = 768
    uv run python benchmarks/bench_attention.py --repeats 3 --windows 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from geogla.gla import GLAConfig, attend, bfloat16_is_fast
from geogla.gla.synthetic import structured_scene


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _six_matmuls(a: torch.Tensor, b: torch.Tensor) -> None:
    for _ in range(6):
        torch.matmul(a, b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=3, help="windows per side (L = windows^2), default 3")
    parser.add_argument(
        "--side", type=int, default=28, help="tokens per window side (N = side^2), default 28"
    )
    parser.add_argument("--dim", type=int, default=768, help="key and value channels, default 768")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up, default 5")
    parser.add_argument("--verbose", action="store_true", help="print every repeat's times")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    scene = structured_scene(window_rows=args.windows, window_cols=args.windows, side=args.side, dim=args.dim)
    keys, values = scene.keys, scene.values
    n_windows, n_tokens, dim = keys.shape
    total = n_windows * n_tokens
    print(
        f"L={n_windows} N={n_tokens} T={total} D={dim} threads={torch.get_num_threads()} "
        f"bf16_fast={bfloat16_is_fast(keys.device)} torch={torch.__version__}"
    )

    rows = []
    labels = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a = keys.reshape(total, dim).to(dtype)
        b = a.T.contiguous()
        cfg = GLAConfig(precision=name)  # type: ignore[arg-type]
        _six_matmuls(a, b)
        out = attend(keys, values, cfg)  # warm-up
        labels[name] = (out @ scene.class_vectors.T).argmax(dim=-1)
        mm, att = [], []
        for _ in range(args.repeats):
            mm.append(_seconds(partial(_six_matmuls, a, b)))
            att.append(_seconds(partial(attend, keys, values, cfg)))
        ratio = statistics.median(x / y for x, y in zip(att, mm, strict=True))
        if args.verbose:
            print(f"  {name}: matmul x6 {[round(x, 3) for x in mm]}  attend {[round(x, 3) for x in att]}")
        rows.append((name, statistics.median(mm), statistics.median(att), ratio))

    base = GLAConfig.proxyclip()
    attend(keys, values, base)
    proxyclip = statistics.median(_seconds(lambda: attend(keys, values, base)) for _ in range(args.repeats))

    print(f"{'dtype':<10}{'matmul x6 s':>13}{'attend s':>11}{'ratio':>8}")
    for name, mm_s, att_s, ratio in rows:
        print(f"{name:<10}{mm_s:>13.3f}{att_s:>11.3f}{ratio:>8.2f}")
    print(f"ProxyCLIP baseline (float32, window by window): {proxyclip:.3f} s")
    changed = int((labels["float32"] != labels["bfloat16"]).sum())
    agree = float((labels["float32"] == scene.labels).float().mean())
    print(
        f"labels changed by bfloat16: {changed} of {labels['float32'].numel()}; float32 vs truth: {agree:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

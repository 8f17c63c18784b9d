"""The ``geogla`` command line.

Exit codes: 0 success; 2 a problem the user can fix (one sentence on stderr, no traceback);
1 an unexpected failure (a bug: the traceback is printed).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from geogla.errors import ConfigError, UserInputError, describe_fault
from geogla.units import format_bytes, format_duration, format_elapsed

if TYPE_CHECKING:

    from geogla.pipelines.run import Progress, RunResult

RANDOM_WEIGHTS_BANNER = (
    "WARNING: --weights random: CLIP (and the VFM, where the preset has one) has RANDOM weights. The "
    "labels are meaningless; this mode only exercises and benchmarks the pipeline.")


class ProgressPrinter:
    """Prints a run's progress on stderr: one updating line on a terminal, else a line at most
    every ``interval`` seconds (logs stay short), and always the last state."""

    def __init__(self, interval: float = 15.0) -> None:
        self.tty = sys.stderr.isatty()
        self.interval = interval
        self._last = -1e9
        self._width = 0

    def __call__(self, p: Progress) -> None:
        finished = all(p.done[k] == p.total[k] for k in p.total)
        if not self.tty and not finished and p.elapsed - self._last < self.interval:
            return
        self._last = p.elapsed
        stages = " | ".join(
            f"{k} {p.done[k]}/{p.total[k]}" for k in p.total if p.total[k] > 1 or k == "attend"
        )
        rate = p.windows_per_second()
        tail = f", {rate:.1f} windows/s" if rate else ""
        left = p.seconds_left()
        if left:
            # "~": from the plan, not yet from the stage's own pace
            tail += ", left: " + ", ".join(f"{stage} {'' if own else '~'}{format_duration(sec)}"
                                           for stage, (sec, own) in left.items())
        line = f"{stages}{tail} [{format_elapsed(p.elapsed)}]"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self._width) + ("\n" if finished else ""))
            self._width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one sentence and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"geogla: error: {message[0].upper() + message[1:]}.\n")
        raise SystemExit(2)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds of at least 0, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated band numbers such as 1,2,3, got {text!r}"
        ) from None
    return values


def _add_model_arguments(parser: argparse.ArgumentParser, random_means: str) -> None:
    """The model options every command that runs the encoders takes (preset and weights)."""
    parser.add_argument(
        "--model",
        default="default",
        help="model preset (default: CLIP ViT-B/16 + DINO ViT-B/8; `geogla models` lists them)",
    )
    parser.add_argument("--weights", choices=("pretrained", "random"), default="pretrained",
                        help=f"'random' runs without weights ({random_means})")
    parser.add_argument("--clip-weights", metavar="PATH", help="local CLIP checkpoint file")
    parser.add_argument("--vfm-weights", metavar="PATH", help="local VFM (DINO) checkpoint file")


def _add_precision_argument(parser: argparse.ArgumentParser, default: str | None, why: str) -> None:
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"), default=default,
                        help=f"dtype of the encoders and of attention's matrix products (default: {why})")


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    """-q and -v, accepted before or after the command: no defaults (argparse.SUPPRESS), so that a
    command's default cannot overwrite what was given before it; read them with :func:`_flag`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="warnings and errors only: no progress, no information lines")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="also debugging lines")


def _flag(args: argparse.Namespace, name: str) -> bool:
    return bool(getattr(args, name, False))


def configure_logging(quiet: bool, verbose: bool) -> None:
    """geogla's log lines on stderr, one message a line: warnings only with ``quiet``, information by
    default (weights found, the cluster's dashboard, a stale lock taken over), debugging with ``verbose``."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("geogla")
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    from geogla import __version__

    parser = _Parser(prog="geogla", description="Open-vocabulary segmentation of large aerial, satellite and "
                     "drone images (ProxyCLIP + GLA, training-free).")
    parser.add_argument("--version", action="version", version=f"geogla {__version__}")
    _add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="segment a scene into a class COG and a styled GeoPackage")
    run.add_argument("scene", nargs="+",
                     help="the input raster (GeoTIFF, JPEG, PNG, VRT, ... anything GDAL reads), a path or a "
                          "URL (https://, s3://); several files or a folder of them run as one mosaic; or "
                          "a STAC item (.json)")
    run.add_argument(
        "--classes",
        required=True,
        help='classes separated by commas, synonyms of one class by "|", e.g. "building,tree|forest,road"',
    )
    run.add_argument("-o", "--out", default="geogla-out", help="output folder (default: ./geogla-out)")
    _add_model_arguments(run, random_means="labels meaningless; for testing and benchmarks")
    _add_precision_argument(
        run,
        default=None,
        why="auto: 16-bit where the device computes it natively, else float32 (ProxyCLIP attention float32)",
    )
    run.add_argument("--crop", type=int, help="window size in pixels (default: the preset's, 224)")
    run.add_argument("--stride", type=int, help="window stride in pixels (default: the preset's, 112)")
    run.add_argument("--attention", choices=("gla", "proxyclip"), default="gla",
                     help="gla: attention across all windows (default); proxyclip: each window alone")
    run.add_argument("--attention-algorithm", choices=("auto", "exact", "scalable"), default=None,
                     help="GLA across windows: exact (cost grows with the square of the scene), scalable "
                          "(linear cost, far windows sampled) or auto (default: exact up to 32,768 tokens)")
    run.add_argument("--context-radius", type=int, default=None, metavar="WINDOWS",
                     help="bound each pixel's context to the windows within this many window strides "
                          "(exact attention over them): pieces of a large area then give the labels of "
                          "the whole inside them (default: the whole scene)")
    run.add_argument(
        "--smoothing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="query smoothing over each token's neighbours and overlapping windows (default: the "
        "preset's; on for presets without a VFM)",
    )
    run.add_argument("--background", metavar="NAME",
                     help="class given to pixels whose top probability is below --prob-threshold")
    run.add_argument("--prob-threshold", type=float, default=0.0, metavar="P",
                     help="probability under which a pixel becomes background (default 0: off)")
    run.add_argument(
        "--logit-scale", type=float, default=40.0, help="softmax scale of the cosine logits (40)"
    )
    run.add_argument("--bands", type=_int_list, metavar="B,B,B",
                     help="bands fed to the models as R,G,B (1-based; one band is repeated)")
    run.add_argument(
        "--gsd",
        type=float,
        metavar="METRES",
        help="working resolution for the models in metres per pixel (outputs stay on the input's grid)",
    )
    run.add_argument("--bbox", metavar="MINX,MINY,MAXX,MAXY",
                     help="segment only this part of the scene (in its CRS, or in --bbox-crs)")
    run.add_argument("--bbox-crs", metavar="CRS",
                     help="the CRS of --bbox, e.g. EPSG:4326 for longitude/latitude (default: the scene's)")
    run.add_argument("--asset", metavar="KEY",
                     help="the asset of a STAC item scene to segment (default: 'visual', else its only "
                          "raster asset)")
    run.add_argument("--save-probabilities", action="store_true",
                     help="also write OUT/<scene>.probabilities.tif: one band per class, probability x 255")
    run.add_argument(
        "--min-area", type=float, metavar="M2", help="drop polygons smaller than this (square metres)"
    )
    run.add_argument("--simplify", type=float, metavar="METRES",
                     help="simplify polygons by this tolerance, keeping neighbours edge-matched")
    run.add_argument("--progress-interval", type=_seconds, default=15.0, metavar="SECONDS",
                     help="seconds between progress lines when stderr is not a terminal (default 15; "
                          "the QGIS plugin reads them every second)")
    run.add_argument("--stac-hrefs", choices=("relative", "absolute"), default="relative",
                     help="the STAC item's asset hrefs: relative to its folder (default; move the outputs "
                          "together) or absolute with a self link (for a STAC API that keeps the item)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    run.add_argument("--labels", metavar="PATH",
                     help="label raster of class ids (in --classes order, 255 = unlabelled) the size of the "
                          "scene: report mIoU and the Boundary Error Rate")
    run.add_argument(
        "--store",
        metavar="URL",
        help="run store location (default OUT/<scene>.zarr); any fsspec "
        "URL, e.g. s3://bucket/prefix/run.zarr (endpoint from $AWS_ENDPOINT_URL)",
    )
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on the Dask cluster of this scheduler, e.g. tcp://head:8786 (default: "
                          "$DASK_SCHEDULER_ADDRESS, else a local cluster in this process)")
    run.add_argument("--overwrite", action="store_true", help="discard a run store made with other settings")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (windows, attention, disk, time) and stop: nothing is computed or written",
    )
    run.add_argument("--compact", action="store_true",
                     help="at the end, drop the store's keys and values (a rerun with other classes still "
                          "reuses it; one with other attention settings encodes again)")
    _add_verbosity(run)
    _add_eval_parser(sub)
    _add_models_parser(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from geogla.api import segment
    from geogla.scene import Scene

    def start(scene: Scene) -> None:
        if args.weights == "random":
            print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)
        if scene.pixel_coordinates:
            print(
                f"note: {named} has no CRS; the outputs are in pixel coordinates (x = column, y = -row) "
                "and areas in square pixels.",
                file=sys.stderr,
            )

    named = args.scene[0] if len(args.scene) == 1 else f"the mosaic of {len(args.scene)} files"
    result = segment(
        args.scene[0] if len(args.scene) == 1 else args.scene,
        args.classes,
        args.out,
        model=args.model,
        weights=args.weights,
        clip_weights=args.clip_weights,
        vfm_weights=args.vfm_weights,
        crop=args.crop,
        stride=args.stride,
        attention=args.attention,
        algorithm=args.attention_algorithm,
        context_radius=args.context_radius,
        smoothing=args.smoothing,
        precision=args.precision,
        background=args.background,
        prob_threshold=args.prob_threshold,
        logit_scale=args.logit_scale,
        bands=args.bands,
        gsd=args.gsd,
        bbox=args.bbox,
        bbox_crs=args.bbox_crs,
        asset=args.asset,
        save_probabilities=args.save_probabilities,
        min_area=args.min_area,
        simplify=args.simplify,
        stac_hrefs=args.stac_hrefs,
        labels=args.labels,
        device=args.device,
        store=args.store,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
        compact=args.compact,
        dry_run=args.dry_run,
        on_start=start,
        progress=None if _flag(args, "quiet") else ProgressPrinter(args.progress_interval),
    )
    if args.dry_run:
        return _print_plan(result, args.out)
    if result.valid_windows == 0:
        print(f"warning: {named} is entirely nodata; the outputs are empty.", file=sys.stderr)
    if result.resumed:
        print(f"Resumed the run store {result.store_url}.", file=sys.stderr)
    for kind, path in result.outputs.items():
        print(f"{kind}: {path}")
    if result.metrics:
        m = result.metrics
        caveat = " (random weights: not a quality figure)" if args.weights == "random" else ""
        print(f"boundary error rate {m['ber']:.2f}%, mIoU {m['miou']:.2f}%, pixel accuracy "
              f"{m['pixel_accuracy']:.2f}%{caveat}")
    spent = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(result.timings.items()) if v >= 0.05)
    print(f"done in {result.wall:.1f}s ({spent})", file=sys.stderr)
    print(_store_note(result), file=sys.stderr)
    return 0


def _print_plan(result: RunResult, out_dir: str) -> int:
    """``geogla run --dry-run``: the plan on stdout; exit 2 when it does not fit on the disk."""
    from geogla.pipelines.footprint import REFERENCE_MACHINE, check_disk, disk_needs

    fp = result.footprint
    assert fp is not None
    rows, cols = fp.token_grid
    store = ", ".join(f"{part} {format_bytes(size)}" for part, size in fp.store.items() if size)
    lines = [
        f"windows    {fp.windows:,}, {rows}x{cols} = {rows * cols:,} tokens each, {fp.tokens:,} in all",
        f"attention  {fp.algorithm}",
        f"run store  {format_bytes(fp.store_bytes)} at {result.store_url} ({store}); "
        f"{format_bytes(fp.compacted_bytes)} after --compact",
        f"outputs    at most {format_bytes(fp.output_bytes)} in {out_dir}",
    ]
    lines += [f"disk       {format_bytes(need.size)} needed on the disk of {need.folder}, "
              f"{format_bytes(need.free)} free" for need in disk_needs(fp, result.store_url, out_dir)]
    if fp.seconds:
        stages = ", ".join(f"{stage} {format_duration(sec)}" for stage, sec in fp.seconds.items())
        lines.append(
            f"time       about {format_duration(sum(fp.seconds.values()))} ({stages}), from benchmark "
            f"figures of a {REFERENCE_MACHINE}; this machine was not measured"
        )
    else:
        lines.append("time       no benchmark figures for this model, device and precision")
    print("\n".join(lines))
    check_disk(fp, result.store_url, out_dir)
    print("nothing was computed or written (--dry-run)", file=sys.stderr)
    return 0


def _store_note(result: RunResult) -> str:
    """What the run store now takes and what to do with it."""
    url = result.store_url
    size = f"{format_bytes(result.store_bytes)}" if result.store_bytes else "size not measured (remote)"
    if result.compacted:
        return (f"run store {url}: {size}, compacted (a rerun with other classes reuses it; remove it when "
                "no rerun is planned, the outputs do not need it).")
    after = result.footprint.compacted_bytes if result.footprint else 0
    return (
        f"run store {url}: {size}; the outputs do not need it: remove it, or keep it to rerun with other "
        "classes without encoding again (rerun with --compact to keep only that, about "
        f"{format_bytes(after)})."
    )


def _add_eval_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """The ``geogla eval`` subcommand: a benchmark split scored with ProxyCLIP and/or GLA attention."""

    def _non_negative_int(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {value}")
        return value

    ev = sub.add_parser("eval", help="score ProxyCLIP and GLA on a labelled benchmark (mIoU, BER, figures)")
    ev.add_argument(
        "dataset",
        help="a preset of configs/datasets.yaml (vaihingen, potsdam, uavid, vdd, udd5, loveda, "
        "openearthmap, dubai_aerial) or 'folder' with --legend",
    )
    ev.add_argument("--root", required=True, help="the dataset folder as downloaded (or converted by mmseg)")
    ev.add_argument(
        "--split", choices=("train", "val", "test"), help="split to score (default: the preset's)"
    )
    ev.add_argument(
        "--legend",
        metavar="FILE",
        help="YAML legend (labels ids or colours, optionally classes and protocol); needed for 'folder'",
    )
    ev.add_argument(
        "--attention",
        choices=("gla", "proxyclip", "both"),
        default="both",
        help="attention to score; 'both' (default) adds the GLA - ProxyCLIP column and encodes once",
    )
    ev.add_argument(
        "--limit", type=_non_negative_int, metavar="N", help="score only the first N images (tiles)"
    )
    ev.add_argument("-o", "--out", help="output folder (default: ./geogla-eval/<dataset>-<split>)")
    ev.add_argument("--figures", type=_non_negative_int, default=0, metavar="K",
                    help="write a comparison PNG for each of the first K images to OUT/figures")
    _add_model_arguments(ev, random_means="scores meaningless; for testing")
    _add_precision_argument(
        ev, default="float32", why="float32, the same labels on every machine; auto is faster"
    )
    ev.add_argument("--classes", help="prompts replacing the preset's, same number and order of classes")
    ev.add_argument(
        "--prob-threshold", type=float, metavar="P", help="background threshold (preset's by default)"
    )
    ev.add_argument("--background", metavar="NAME", help="background class (preset's by default)")
    ev.add_argument("--resize", type=_non_negative_int, metavar="N",
                    help="resize images so the long side is N pixels (preset's, 448; 0: no resize)")
    ev.add_argument("--crop", type=int, help="window size in pixels (preset's, 224)")
    ev.add_argument("--stride", type=int, help="window stride in pixels (preset's, 112)")
    ev.add_argument("--logit-scale", type=float, help="softmax scale of the cosine logits (preset's, 40)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    ev.add_argument("--keep-stores", action="store_true",
                    help="keep the per-image run stores in OUT/stores (a rerun reuses their encoded windows)")
    _add_verbosity(ev)


def _eval(args: argparse.Namespace) -> int:
    import time

    from geogla.api import evaluate
    from geogla.pipelines.evaluate import MODE_TITLES, ImageResult

    def start(what: str, n: int, available: int) -> None:
        if args.weights == "random":
            print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)
        print(f"{what}: scoring {n} of {available} images from {args.root}", file=sys.stderr)

    def _pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    started = time.perf_counter()

    def progress(i: int, n: int, r: ImageResult) -> None:
        if _flag(args, "quiet"):
            return
        parts = ", ".join(
            f"{MODE_TITLES[m]} mIoU {_pct(s['miou'])} BER {_pct(s['ber'])}" for m, s in r.scores.items()
        )
        per = (time.perf_counter() - started) / i
        left = f", ~{per * (n - i) / 60:.0f} min left" if n > i else ""
        print(f"[{i}/{n}] {r.name}: {parts} ({per:.1f} s/image{left})", file=sys.stderr)

    report, paths = evaluate(
        args.dataset,
        args.root,
        args.out,
        split=args.split,
        legend=args.legend,
        attention=args.attention,
        limit=args.limit,
        figures=args.figures,
        model=args.model,
        weights=args.weights,
        clip_weights=args.clip_weights,
        vfm_weights=args.vfm_weights,
        classes=args.classes,
        prob_threshold=args.prob_threshold,
        background=args.background,
        resize=args.resize,
        crop=args.crop,
        stride=args.stride,
        logit_scale=args.logit_scale,
        device=args.device,
        precision=args.precision,
        keep_stores=args.keep_stores,
        on_start=start,
        progress=progress,
    )
    print(report.markdown())
    if report.decode.unmatched:
        print(f"warning: {report.decode.unmatched} label pixels had values the legend does not know "
              f"({', '.join(sorted(report.decode.examples))}); they were not scored.", file=sys.stderr)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    figures = [r.figure for r in report.images if r.figure]
    if figures:
        print(f"figures: {len(figures)} in {paths['json'].parent / 'figures'}")
    print(f"done in {report.wall:.1f}s", file=sys.stderr)
    return 0


def _add_models_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """The ``geogla models`` subcommand: the model presets, their sizes and where their weights are."""
    models = sub.add_parser("models", help="list the model presets: sizes, memory per window, weights found")
    models.add_argument("names", nargs="*", metavar="NAME", help="presets to show (default: all)")


def _models(args: argparse.Namespace) -> int:
    from geogla.models.listing import models_text

    print(models_text(args.names))
    return 0


#: Options whose value may start with a minus sign (western longitudes, southern latitudes).
SIGNED_LIST_OPTIONS = ("--bbox",)


def joined_signed_values(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--bbox -93.6,41.5,...`` written ``--bbox=-93.6,41.5,...``: argparse takes a
    value that starts with ``-`` and is not one plain number for an option, and would refuse it."""
    out: list[str] = []
    pending = False
    for arg in argv:
        if pending and arg.startswith("-") and len(arg) > 1 and (arg[1].isdigit() or arg[1] == "."):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
        pending = arg in SIGNED_LIST_OPTIONS
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geogla`` command; returns the exit code."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        args = build_parser().parse_args(joined_signed_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0)
        return int(exc.code or 0)
    configure_logging(_flag(args, "quiet"), _flag(args, "verbose"))
    from geogla.models.weights import RandomWeightsWarning

    try:
        with warnings.catch_warnings():
            # The banner says it, once and loudly.
            warnings.filterwarnings("ignore", category=RandomWeightsWarning)
            if args.command == "run":
                return _run(args)
            if args.command == "eval":
                return _eval(args)
            if args.command == "models":
                return _models(args)
            raise ConfigError(f"Unknown command {args.command}.")
    except UserInputError as exc:
        print(f"geogla: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geogla: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except Exception as exc:  # a fault, not the user's input: one sentence; the stack with -v
        print(f"geogla: error: {describe_fault(exc)}", file=sys.stderr)
        if _flag(args, "verbose"):
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

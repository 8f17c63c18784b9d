"""geogla's Python API: :func:`segment` a scene, :func:`evaluate` on a benchmark split.

``geogla run`` and ``geogla eval`` are thin layers over these two functions: every check the
commands make, these make, and in the same order.  Bad input raises a
:class:`geogla.errors.UserInputError` (one sentence) before anything is written.  Cheap checks come
first (the class list, the numbers, the preset, the scene's header, the output folder); torch,
Dask and the models are imported only once they have passed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from geogla.classes import parse_classes
from geogla.errors import ConfigError
from geogla.models.registry import get_preset
from geogla.models.weights import find_weights
from geogla.mosaic import parse_bbox
from geogla.paths import check_output_dir, make_output_dir
from geogla.pipelines.plan import plan_run
from geogla.runconfig import RunConfig, attention_config
from geogla.scene import Scene, SceneInput

if TYPE_CHECKING:
    from geogla.pipelines.evaluate import EvalReport, ImageResult
    from geogla.pipelines.run import Progress, RunResult

PathLike = str | os.PathLike[str]


def segment(
    scene: SceneInput,
    classes: str | Sequence[str],
    out: PathLike = "geogla-out",
    *,
    model: str = "default",
    weights: Literal["pretrained", "random"] = "pretrained",
    clip_weights: PathLike | None = None,
    vfm_weights: PathLike | None = None,
    crop: int | None = None,
    stride: int | None = None,
    attention: Literal["gla", "proxyclip"] = "gla",
    algorithm: Literal["auto", "exact", "scalable"] | None = None,
    context_radius: int | None = None,
    smoothing: bool | None = None,
    precision: Literal["auto", "float32", "bfloat16", "float16"] | None = None,
    background: str | None = None,
    prob_threshold: float = 0.0,
    logit_scale: float = 40.0,
    bands: Sequence[int] | None = None,
    gsd: float | None = None,
    bbox: str | Sequence[float] | None = None,
    bbox_crs: str | None = None,
    asset: str | None = None,
    save_probabilities: bool = False,
    min_area: float | None = None,
    simplify: float | None = None,
    stac_hrefs: Literal["relative", "absolute"] = "relative",
    labels: PathLike | None = None,
    device: str = "auto",
    store: str | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    compact: bool = False,
    dry_run: bool = False,
    on_start: Callable[[Scene], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Segment ``scene`` into ``classes``: a class COG, a styled GeoPackage and a STAC item in ``out``.

    Args:
        scene: a raster GDAL reads (GeoTIFF, JPEG, PNG, VRT, ...): a path or a URL (``https://``,
            ``s3://``, read by range requests); or several files, or a folder of them, run as one
            mosaic; or a STAC Item (``.json``, local or URL) whose ``asset`` is read (default
            ``visual``, else its only raster asset), the outputs named after the Item's id and
            their STAC item derived from it (:func:`geogla.scene.open_scene`).
        classes: ``"building,tree|forest,road"`` (classes by commas, synonyms by ``|``) or a list of
            such class entries.
        out: the output folder (created).
        model, weights, clip_weights, vfm_weights: the model preset (``geogla models``) and its
            weights (``"random"``: meaningless labels, for tests and benchmarks).
        crop, stride: the sliding windows in pixels (default: the preset's).
        attention: ``"gla"`` (across all windows) or ``"proxyclip"`` (each window alone).
        algorithm, smoothing: GLA's algorithm (:func:`geogla.gla.choose_algorithm`) and query
            smoothing; None keeps the preset's or the method's default.
        context_radius: bound GLA's context to the windows within this many window strides of a
            pixel (its covering windows and ``context_radius`` rings around them): a pixel's label
            then depends on those windows only, so pieces of a large area give the labels of the
            whole more than the radius inside their edges (``GLAConfig.context_radius``, in
            tokens: this times the stride over the model's token size).  None: the whole scene.
        precision: the encoders' and attention's dtype (``"auto"``: 16-bit where the device
            computes it natively, :func:`geogla.precision.encoder_dtype`); None: ``"auto"`` for the
            encoders and GLA, float32 for ProxyCLIP's attention.
        background, prob_threshold: pixels whose top class probability is below the threshold
            get class ``background`` (a listed class, or a new one appended).
        logit_scale: the softmax scale of the cosine logits.
        bands: the bands fed to the models as R, G, B (1-based; one band is repeated).
        gsd: the working resolution in metres per pixel (the outputs stay on the input's grid).
        bbox, bbox_crs: segment only the pixels this box touches (``"MINX,MINY,MAXX,MAXY"`` or
            four numbers, in ``bbox_crs``, e.g. ``"EPSG:4326"``; default the scene's CRS); the
            outputs cover the box.
        save_probabilities, min_area, simplify: extra outputs and polygon filtering.
        stac_hrefs: the STAC item's asset hrefs: ``"relative"`` to its folder (move the outputs
            together) or ``"absolute"`` with a ``self`` link (for a STAC API that keeps the item).
        labels: a label raster of class ids the size of the scene: mIoU and BER are measured.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        store: the run store's URL (default ``out/<stem>.zarr``); scheduler: a Dask scheduler's
            address (default ``$DASK_SCHEDULER_ADDRESS``, else a local cluster); overwrite: discard
            a run store made with other settings.
        compact: at the end, drop what only a rerun with other attention settings would read
            (:meth:`geogla.store.RunStore.compact`).
        dry_run: check everything and plan the run (:class:`geogla.pipelines.footprint.Footprint`
            in the result's ``footprint``: windows, attention, disk, time) without loading the
            weights, computing or writing anything; the result has no outputs.
        on_start: called with the opened scene once every check has passed, before the work.
        progress: called with a :class:`geogla.pipelines.run.Progress` after every finished task.

    Returns:
        The :class:`geogla.pipelines.run.RunResult`: output paths, timings and metrics.

    Raises:
        geogla.errors.UserInputError: bad input, reported before anything is written.
    """
    class_list = parse_classes(
        classes if isinstance(classes, str) else ",".join(classes),
        background=background,
        prob_threshold=prob_threshold,
    )
    preset = get_preset(model)
    window_stride = preset.stride if stride is None else stride
    gla = attention_config(preset, attention, smoothing=smoothing, algorithm=algorithm, precision=precision,
                           context_radius=_context_tokens(context_radius, attention, window_stride,
                                                          preset.key_patch))
    config = RunConfig(
        classes=class_list,
        model=model,
        weights=weights,
        clip_weights=None if clip_weights is None else str(clip_weights),
        vfm_weights=None if vfm_weights is None else str(vfm_weights),
        precision="auto" if precision is None else precision,
        crop=preset.crop if crop is None else crop,
        stride=window_stride,
        attention=gla,
        logit_scale=logit_scale,
        device=device,
        save_probabilities=save_probabilities,
        min_area=min_area,
        simplify=simplify,
        stac_hrefs=stac_hrefs,
    )
    plan = plan_run(
        scene,
        out,
        config,
        bands=None if bands is None else list(bands),
        gsd=gsd,
        bbox=None if bbox is None else parse_bbox(bbox),
        bbox_crs=bbox_crs,
        asset=asset,
        store_url=store,
        labels=labels,
    )
    # Dask and torch: after the checks
    from geogla.pipelines.run import connect, execute, scheduler_address
    from geogla.pipelines.run import dry_run as plan_only

    if dry_run:
        return plan_only(plan)
    address = scheduler_address(scheduler)
    if address is None:
        return execute(plan, overwrite=overwrite, compact=compact, on_start=on_start, progress=progress)
    with connect(address) as client:
        return execute(plan, overwrite=overwrite, compact=compact, client=client, on_start=on_start,
                       progress=progress)


def evaluate(
    dataset: str,
    root: PathLike,
    out: PathLike | None = None,
    *,
    split: str | None = None,
    legend: PathLike | None = None,
    attention: Literal["both", "gla", "proxyclip"] = "both",
    limit: int | None = None,
    figures: int = 0,
    model: str = "default",
    weights: Literal["pretrained", "random"] = "pretrained",
    clip_weights: PathLike | None = None,
    vfm_weights: PathLike | None = None,
    classes: str | None = None,
    prob_threshold: float | None = None,
    background: str | None = None,
    resize: int | None = None,
    crop: int | None = None,
    stride: int | None = None,
    logit_scale: float | None = None,
    device: str = "auto",
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
    keep_stores: bool = False,
    on_start: Callable[[str, int, int], None] | None = None,
    progress: Callable[[int, int, ImageResult], None] | None = None,
) -> tuple[EvalReport, dict[str, Path]]:
    """Score ProxyCLIP and/or GLA on a benchmark split; write ``metrics.json``, ``metrics.md`` and
    figures to ``out`` (default ``geogla-eval/<dataset>-<split>``).

    ``dataset`` is a preset of ``configs/datasets.yaml`` or ``"folder"`` with ``legend``; the
    protocol's settings (``classes``, ``prob_threshold``, ``background``, ``resize`` (0: none),
    ``crop``, ``stride``, ``logit_scale``) override the preset's.  ``precision`` is float32 by
    default, so that a reproduction gives the same labels on every machine.  ``on_start``
    is called once the images are known (``on_start("vaihingen val", n, available)``: ``n`` to score
    of those available), ``progress`` after each image.

    Returns the report and the paths written.  Raises :class:`geogla.errors.UserInputError` on bad
    input, before anything is written.
    """
    from geogla.datasets import expand_tiles, find_samples, get_spec

    spec = get_spec(dataset, None if legend is None else str(legend)).with_overrides(
        classes=classes,
        background=background,
        prob_threshold=prob_threshold,
        resize_long_side=resize,
        crop=crop,
        stride=stride,
        logit_scale=logit_scale,
    )
    chosen_split = split or spec.split
    samples = expand_tiles(find_samples(spec.layout, root, chosen_split), spec.tile)
    chosen = samples[:limit] if limit is not None else samples
    if not chosen:
        raise ConfigError(
            "--limit 0 leaves no image to score." if limit == 0 else f"No image to score in {root}."
        )
    out_dir = Path(out) if out is not None else Path("geogla-eval") / f"{spec.name}-{chosen_split}"
    modes = ("proxyclip", "gla") if attention == "both" else (attention,)
    check_output_dir(str(out_dir))
    find_weights(get_preset(model), weights, clip_weights, vfm_weights)
    from geogla.pipelines.evaluate import EvalOptions, evaluate_dataset, write_report  # torch: after checks

    make_output_dir(str(out_dir))
    options = EvalOptions(
        model=model,
        weights=weights,
        clip_weights=None if clip_weights is None else str(clip_weights),
        vfm_weights=None if vfm_weights is None else str(vfm_weights),
        device=device,
        modes=modes,
        precision=precision,
        figures=figures,
        keep_stores=keep_stores,
    )
    if on_start is not None:
        on_start(f"{spec.name} {chosen_split}", len(chosen), len(samples))
    report = evaluate_dataset(spec, chosen, options, out_dir, root=str(root), split=chosen_split,
                              available=len(samples), progress=progress)
    return report, write_report(report, out_dir)


def _context_tokens(windows: int | None, attention: str, stride: int, token_size: int) -> int | None:
    """A context radius of ``windows`` window strides in tokens (rounded up), checked."""
    if windows is None:
        return None
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
        raise ConfigError(
            f"The context radius must be a whole number of windows, at least 0, got {windows!r}."
        )
    if attention != "gla":
        raise ConfigError("A context radius bounds GLA's attention across windows; ProxyCLIP attends "
                          "to each window alone already.")
    return -(-windows * stride // token_size)

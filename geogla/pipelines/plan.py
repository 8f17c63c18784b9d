"""A run's plan: everything checked that a user can get wrong, before anything is written and
before torch or Dask are imported."""

from __future__ import annotations

import os
from dataclasses import dataclass

from geogla.models.registry import get_preset
from geogla.models.weights import find_weights
from geogla.paths import absolute, check_output_dir, join_url
from geogla.runconfig import RunConfig
from geogla.scene import Scene, SceneInput, check_label_raster, open_scene


@dataclass(frozen=True)
class RunPlan:
    """A checked run: the opened scene, its configuration, where its outputs and store go, and the
    label raster to score it against (None: none)."""

    scene: Scene
    config: RunConfig
    out_dir: str
    store_url: str
    labels: str | None = None


def plan_run(scene: SceneInput | Scene, out_dir: str | os.PathLike[str], config: RunConfig, *,
             bands: list[int] | None = None, gsd: float | None = None, resize_long_side: int | None = None,
             bbox: tuple[float, float, float, float] | None = None, bbox_crs: str | None = None,
             asset: str | None = None, store_url: str | None = None,
             labels: str | os.PathLike[str] | None = None) -> RunPlan:
    """Check a run in the order of cost: the scene (opened unless given opened, with ``bands``,
    ``gsd``, ``resize_long_side``, ``bbox``, ``bbox_crs`` and ``asset``:
    :func:`geogla.scene.open_scene`), the label raster, the output folder, the model's weights.

    Raises :class:`geogla.errors.UserInputError` with one sentence on the first problem; nothing is
    written.  The store defaults to ``out_dir/<stem>.zarr``.
    """
    opened = scene if isinstance(scene, Scene) else open_scene(
        scene, bands=bands, gsd=gsd, resize_long_side=resize_long_side, bbox=bbox, bbox_crs=bbox_crs,
        asset=asset)
    label_path = None if labels is None else str(labels)
    if label_path is not None:
        check_label_raster(label_path, opened)
    out = str(out_dir)
    check_output_dir(out)
    find_weights(
        get_preset(config.model), config.weights, config.clip_weights, config.vfm_weights
    )  # may go online
    url = absolute(store_url or join_url(out, f"{opened.stem}.zarr"))
    return RunPlan(opened, config, out, url, label_path)

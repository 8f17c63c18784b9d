"""Benchmark presets: ``configs/datasets.yaml`` (and user legend files) read into :class:`DatasetSpec`.

Each entry of ``configs/datasets.yaml`` is a benchmark protocol (docs/method.md section 6) plus the
conventions of the dataset's label files::

    <name>:
      source: str                  # the paper / code the preset follows
      classes: "a,b|b2,c"          # class list in label-id order, synonyms with "|"
      background: str | null       # class given to pixels under the probability threshold
      prob_threshold: float        # 0 disables the background rule
      protocol:
        resize_long_side: int | null   # the models see the image resized so its long side is this
        crop: int                      # slide window (pixels of the resized image)
        stride: int
        logit_scale: float
        tile: [height, width]          # optional: cut larger images into tiles first (UAVid frames)
      layout: isprs | loveda | uavid | vdd | udd | openearthmap | folder   # geogla.datasets.layouts
      split: val | test            # default split
      labels:                      # geogla.datasets.legend.LabelLegend.from_yaml
        ids: {value: class name}         # single-band masks
        colours: {"#RRGGBB": class name} # RGB masks
        ignore_ids: [values]             # unlabelled (not scored)
        ignore_colours: ["#RRGGBB"]
      palette: {class name: "#RRGGBB"}   # optional figure colours (default: the legend's colours)
      published:                          # optional reference numbers (real weights)
        source: str
        miou: {proxyclip: float, gla: float}

A legend file for the generic ``folder`` layout (``--legend FILE``) has the same keys, all optional
except ``labels``; without ``classes`` the classes are the legend's class names in order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from geogla.classes import ClassList, parse_classes
from geogla.datasets.legend import RGB, LabelLegend, parse_colour
from geogla.errors import ConfigError
from geogla.models.registry import find_config_file

DATASETS_YAML = "datasets.yaml"  #: file name of the dataset presets inside the configs folder

#: Keys an entry may have; anything else is a typo and refused.
_KEYS = {"source", "classes", "background", "prob_threshold", "protocol", "layout", "split", "labels",
         "palette", "published"}
_PROTOCOL_KEYS = {"resize_long_side", "crop", "stride", "logit_scale", "tile"}

#: The protocol of docs/method.md section 6 (SegEarth-OV), used where a legend file gives none.
DEFAULT_PROTOCOL: dict[str, Any] = {"resize_long_side": 448, "crop": 224, "stride": 112, "logit_scale": 40.0}


@dataclass(frozen=True)
class DatasetSpec:
    """Everything ``geogla eval`` needs to know about one benchmark.

    ``classes`` is the class-list text (``"a,b|b2,c"``) whose classes are in label-id order; the
    legend maps mask values to those ids.  ``resize_long_side`` is ``None`` for no resize; ``tile``
    ``(height, width)`` cuts larger images into tiles before evaluation.
    """

    name: str
    source: str
    layout: str
    split: str
    classes: str
    legend: LabelLegend
    background: str | None = None
    prob_threshold: float = 0.0
    resize_long_side: int | None = 448
    crop: int = 224
    stride: int = 112
    logit_scale: float = 40.0
    tile: tuple[int, int] | None = None
    palette: Mapping[str, RGB] = field(default_factory=dict)
    published: Mapping[str, Any] | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        """The classes the labels can take, in id order (first synonym of each class)."""
        return self.legend.class_names

    def with_overrides(self, *, classes: str | None = None, background: str | None = None,
                       prob_threshold: float | None = None, resize_long_side: int | None = None,
                       crop: int | None = None, stride: int | None = None,
                       logit_scale: float | None = None) -> DatasetSpec:
        """This spec with command-line overrides applied (``None`` keeps the preset's value).

        ``classes`` may change the prompts and synonyms but must list as many classes as the
        preset, in the preset's order, because label ids map to class positions.
        ``resize_long_side=0`` turns the resize off.
        """
        changes: dict[str, Any] = {}
        if classes is not None:
            given = [c for c in classes.split(",")]
            if len(given) != len(self.label_names):
                raise ConfigError(f"--classes must list {len(self.label_names)} classes in the order of the "
                                  f"{self.name} labels ({', '.join(self.label_names)}); got {len(given)}.")
            changes["classes"] = classes
        if background is not None:
            changes["background"] = background
        if prob_threshold is not None:
            changes["prob_threshold"] = prob_threshold
        if resize_long_side is not None:
            if resize_long_side < 0:
                raise ConfigError(f"--resize must be a positive number of pixels or 0 (no resize), "
                                  f"got {resize_long_side}.")
            changes["resize_long_side"] = resize_long_side or None
        if crop is not None:
            changes["crop"] = crop
        if stride is not None:
            changes["stride"] = stride
        if logit_scale is not None:
            changes["logit_scale"] = logit_scale
        return replace(self, **changes)

    def class_list(self) -> ClassList:
        """The parsed class list with the background rule, coloured with the dataset's palette."""
        cl = parse_classes(self.classes, background=self.background, prob_threshold=self.prob_threshold)
        colours = list(cl.colours)
        legend_colours = self.legend.class_colours()
        for i, label_name in enumerate(self.label_names[: len(colours)]):
            if label_name in self.palette:
                colours[i] = self.palette[label_name]
            elif i in legend_colours:
                colours[i] = legend_colours[i]
        return replace(cl, colours=tuple(colours))


def load_presets(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The raw entries of ``configs/datasets.yaml`` (or ``path``), by name."""
    path = path or find_config_file(DATASETS_YAML)
    data = _read_yaml(path)
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def preset_names() -> list[str]:
    """Names of the dataset presets that ``geogla eval`` can run (those with a layout and labels)."""
    return [k for k, v in load_presets().items() if "layout" in v and "labels" in v]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"The file {path} cannot be read: {exc.strerror or exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values.")
    return data


def get_spec(name: str, legend_file: str | Path | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of preset ``name``, or of the generic layout ``folder``.

    ``legend_file`` (a YAML file with the keys of a preset entry) is required for ``folder`` and,
    for a preset, overrides the keys it gives.  Raises :class:`ConfigError` for an unknown name or
    a malformed entry.
    """
    presets = load_presets()
    entry: dict[str, Any]
    if name == "folder":
        if legend_file is None:
            raise ConfigError(
                "The folder layout needs --legend FILE: a YAML file with the label ids or colours "
                "(see configs/datasets.yaml for the keys)."
            )
        entry = {"layout": "folder", "split": "val", "source": f"legend file {legend_file}"}
    elif name in presets and "layout" in presets[name]:
        entry = dict(presets[name])
    else:
        raise ConfigError(
            f"Unknown dataset {name!r}; known datasets: {', '.join([*preset_names(), 'folder'])}."
        )
    if legend_file is not None:
        path = Path(legend_file)
        if not path.is_file():
            raise ConfigError(f"The legend file {path} does not exist.")
        entry.update(_read_yaml(path))
        entry["layout"] = "folder" if name == "folder" else entry["layout"]
    return spec_from_entry(name, entry)


def spec_from_entry(name: str, entry: Mapping[str, Any]) -> DatasetSpec:
    """Validate one preset (or legend file) entry and build its :class:`DatasetSpec`."""
    where = f"dataset {name!r}"
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (expected {', '.join(sorted(_KEYS))})."
        )
    labels = entry.get("labels")
    if not isinstance(labels, dict):
        raise ConfigError(f"{where}: 'labels' must be a mapping with ids and/or colours.")
    classes = entry.get("classes")
    if classes is None:
        # A legend without a class list: the classes are the legend's names, in order.
        names: list[str] = []
        for table in ("ids", "colours"):
            for n in (labels.get(table) or {}).values():
                if str(n).strip() and str(n).strip().lower() not in (m.lower() for m in names):
                    names.append(str(n).strip())
        classes = ",".join(names)
    if not isinstance(classes, str):
        raise ConfigError(
            f"{where}: 'classes' must be a class-list string such as \"building,tree|forest,road\"."
        )
    label_names = [item.split("|")[0].strip() for item in classes.split(",")]
    legend = LabelLegend.from_yaml(labels, label_names, where)
    protocol = {**DEFAULT_PROTOCOL, **(entry.get("protocol") or {})}
    bad = sorted(set(protocol) - _PROTOCOL_KEYS)
    if bad:
        raise ConfigError(f"{where}: unknown protocol key(s) {', '.join(bad)}.")
    tile = protocol.get("tile")
    if tile is not None:
        if not (isinstance(tile, list | tuple) and len(tile) == 2 and all(int(t) > 0 for t in tile)):
            raise ConfigError(f"{where}: protocol.tile must be [height, width] in pixels.")
        tile = (int(tile[0]), int(tile[1]))
    palette = {}
    for cls_name, colour in (entry.get("palette") or {}).items():
        key = str(cls_name).strip()
        if key.lower() not in (n.lower() for n in label_names):
            raise ConfigError(f"{where}: the palette names {key!r}, which is not a class.")
        palette[next(n for n in label_names if n.lower() == key.lower())] = parse_colour(colour)
    threshold = float(entry.get("prob_threshold") or 0.0)
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ConfigError(f"{where}: prob_threshold must lie between 0 and 1.")
    resize = protocol.get("resize_long_side")
    return DatasetSpec(
        name=name, source=str(entry.get("source", "")), layout=str(entry.get("layout", "folder")),
        split=str(entry.get("split", "val")), classes=classes, legend=legend,
        background=entry.get("background"), prob_threshold=threshold,
        resize_long_side=int(resize) if resize else None, crop=int(protocol["crop"]),
        stride=int(protocol["stride"]), logit_scale=float(protocol["logit_scale"]), tile=tile,
        palette=palette, published=entry.get("published"))

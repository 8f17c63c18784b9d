"""Benchmark datasets: presets (``configs/datasets.yaml``), label legends and folder layouts.

- :mod:`geogla.datasets.presets`: :class:`DatasetSpec`, the protocol and label conventions of a
  benchmark, read from ``configs/datasets.yaml`` or a legend file.
- :mod:`geogla.datasets.legend`: :class:`LabelLegend`, mask ids or colours -> class ids (255 = not
  scored).
- :mod:`geogla.datasets.layouts`: readers that find the image / mask pairs of a split.
"""

from geogla.datasets.layouts import (
    LAYOUTS,
    DatasetError,
    Sample,
    expand_tiles,
    find_samples,
    load_labels,
    read_mask,
)
from geogla.datasets.legend import IGNORE, DecodeStats, LabelLegend, colour_hex, parse_colour
from geogla.datasets.presets import DatasetSpec, get_spec, load_presets, preset_names, spec_from_entry

__all__ = [
    "IGNORE", "LAYOUTS", "DatasetError", "DatasetSpec", "DecodeStats", "LabelLegend", "Sample", "colour_hex",
    "expand_tiles", "find_samples", "get_spec", "load_labels", "load_presets", "parse_colour", "preset_names",
    "read_mask", "spec_from_entry",
]

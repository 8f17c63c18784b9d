"""Frozen encoders of geogla: one registry of named presets and one factory.

>>> from geogla.models import create_model, list_presets
>>> model = create_model("default", weights="pretrained")      # doctest: +SKIP
>>> keys, values = model.encode(windows)                         # doctest: +SKIP

Presets live in ``configs/models.yaml`` (:mod:`geogla.models.registry`); weights are looked up as
described in :mod:`geogla.models.weights`; the encoders follow docs/method.md section 2
(:mod:`geogla.models.clip`, :mod:`geogla.models.vfm`); ``geogla models`` is
:func:`geogla.models.listing.models_text`.  The registry and the weights' lookup are importable
without torch; the factory imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geogla._lazy import lazy_attributes
from geogla.models.registry import (
    ClipSpec,
    ModelPreset,
    VfmSpec,
    config_dir,
    find_config_file,
    get_preset,
    list_presets,
    load_presets,
)
from geogla.models.weights import (
    WEIGHTS_DIR_ENV,
    RandomWeightsWarning,
    WeightsSource,
    describe_weights,
)

if TYPE_CHECKING:
    from geogla.models.factory import (
        SegmentationModel,
        create_meta_model,
        create_model,
        resolve_device,
        text_templates,
    )

_FACTORY = ("SegmentationModel", "create_meta_model", "create_model", "resolve_device", "text_templates")

__all__ = [
    "WEIGHTS_DIR_ENV",
    "ClipSpec",
    "ModelPreset",
    "RandomWeightsWarning",
    "SegmentationModel",
    "VfmSpec",
    "WeightsSource",
    "config_dir",
    "create_meta_model",
    "create_model",
    "describe_weights",
    "find_config_file",
    "get_preset",
    "list_presets",
    "load_presets",
    "resolve_device",
    "text_templates",
]


__getattr__ = lazy_attributes(__name__, dict.fromkeys(_FACTORY, "geogla.models.factory"))

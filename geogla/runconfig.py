"""The configuration of one run, as recorded in the run store."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from geogla.classes import ClassList
from geogla.errors import ConfigError
from geogla.gla import GLAConfig
from geogla.gla.config import PRECISIONS

if TYPE_CHECKING:
    from geogla.models.registry import ModelPreset

#: Attention modes a run can ask for, and the GLAConfig each starts from.
ATTENTION_MODES = ("gla", "proxyclip")
#: How the STAC item names its assets (``RunConfig.stac_hrefs``).
STAC_HREFS = ("relative", "absolute")

#: Which settings each stored stage result depends on (cumulatively: attend also depends on
#: everything encode depends on, classify on everything attend depends on).  Settings in none of
#: them (device, min_area, simplify, stac_hrefs) change how fast a run goes or only its final files.
FINGERPRINT_LEVELS: dict[str, tuple[str, ...]] = {
    "encode": ("model", "weights", "clip_weights", "vfm_weights", "precision", "crop", "stride",
               "batch_size"),
    "attend": ("attention",),
    "classify": ("classes", "logit_scale", "block", "save_probabilities"),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the scene.

    ``precision`` is the dtype the image encoders compute in (:func:`geogla.precision.encoder_dtype`;
    attention has its own, ``attention.precision``).  ``logit_scale`` multiplies the cosine logits
    before the softmax over prompts (40 for ProxyCLIP and GLA, docs/method.md section 4).
    ``batch_size`` windows are encoded per task and ``block`` is the side of the output blocks the
    class raster is stitched and written in.  ``save_probabilities``
    also writes a per-class probability COG; ``min_area`` (square metres) drops smaller polygons and
    ``simplify`` (metres) simplifies them edge-matched.  ``stac_hrefs``: the STAC item's asset
    hrefs, ``"relative"`` to its folder or ``"absolute"`` with a ``self`` link
    (:func:`geogla.stac.build_stac_item`).
    """

    classes: ClassList
    model: str = "default"
    weights: str = "pretrained"
    clip_weights: str | None = None
    vfm_weights: str | None = None
    precision: str = "auto"
    crop: int = 224
    stride: int = 112
    attention: GLAConfig = field(default_factory=GLAConfig)
    logit_scale: float = 40.0
    device: str = "auto"
    batch_size: int = 8
    block: int = 1024
    save_probabilities: bool = False
    min_area: float | None = None
    simplify: float | None = None
    stac_hrefs: str = "relative"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.weights not in ("pretrained", "random"):
            raise ConfigError(f"--weights must be 'pretrained' or 'random', got {self.weights!r}.")
        if self.crop <= 0:
            raise ConfigError(f"--crop must be a positive number of pixels, got {self.crop}.")
        if not 0 < self.stride <= self.crop:
            raise ConfigError(f"--stride must lie between 1 and the crop ({self.crop}), got {self.stride}.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}.")
        if self.batch_size <= 0 or self.block <= 0:
            raise ConfigError("batch_size and block must be positive.")
        if self.min_area is not None and not self.min_area >= 0:
            raise ConfigError(
                f"--min-area must be zero or a positive area in square metres, got {self.min_area}."
            )
        if self.simplify is not None and not self.simplify >= 0:
            raise ConfigError(
                f"--simplify must be zero or a positive distance in metres, got {self.simplify}."
            )
        if not self.logit_scale > 0:
            raise ConfigError(f"--logit-scale must be positive, got {self.logit_scale}.")
        if self.stac_hrefs not in STAC_HREFS:
            raise ConfigError(
                f"--stac-hrefs must be one of {', '.join(STAC_HREFS)}, got {self.stac_hrefs!r}."
            )

    def with_(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"classes": self.classes.to_json(), "model": self.model, "weights": self.weights,
                "clip_weights": self.clip_weights, "vfm_weights": self.vfm_weights,
                "precision": self.precision, "crop": self.crop,
                "stride": self.stride, "attention": self.attention.to_json(), "logit_scale": self.logit_scale,
                "device": self.device, "batch_size": self.batch_size, "block": self.block,
                "save_probabilities": self.save_probabilities, "min_area": self.min_area,
                "simplify": self.simplify, "stac_hrefs": self.stac_hrefs}

    def level_json(self, level: str) -> dict[str, Any]:
        """The settings that stage results up to ``level`` depend on (see :data:`FINGERPRINT_LEVELS`)."""
        names = list(FINGERPRINT_LEVELS)
        keys = [k for lvl in names[: names.index(level) + 1] for k in FINGERPRINT_LEVELS[lvl]]
        full = self.to_json()
        return {k: full[k] for k in keys}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunConfig:
        return cls(classes=ClassList.from_json(d["classes"]), model=d["model"], weights=d["weights"],
                   clip_weights=d.get("clip_weights"), vfm_weights=d.get("vfm_weights"),
                   precision=str(d.get("precision", "float32")), crop=int(d["crop"]),
                   stride=int(d["stride"]), attention=GLAConfig.from_json(d["attention"]),
                   logit_scale=float(d["logit_scale"]), device=d.get("device", "auto"),
                   batch_size=int(d["batch_size"]), block=int(d["block"]),
                   save_probabilities=bool(d.get("save_probabilities", False)), min_area=d.get("min_area"),
                   simplify=d.get("simplify"), stac_hrefs=str(d.get("stac_hrefs", "relative")))


def attention_config(model: str | ModelPreset, mode: str = "gla", **explicit: Any) -> GLAConfig:
    """The attention settings of a run with preset ``model``, in three layers, later ones winning.

    1. ``mode``: ``"gla"`` starts from :class:`GLAConfig` (the paper's GLA), ``"proxyclip"`` from
       :meth:`GLAConfig.proxyclip` (each window alone);
    2. the preset's ``attention`` overrides (e.g. ``{smoothing: true}`` for a preset whose keys are
       CLIP's own queries, docs/method.md section 3c);
    3. ``explicit`` GLAConfig fields set on the command line; a None value means "not given".

    An unknown mode or field raises ConfigError.
    """
    from geogla.models.registry import ModelPreset, get_preset

    preset = model if isinstance(model, ModelPreset) else get_preset(model)
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"Unknown attention mode {mode!r}; use one of {', '.join(ATTENTION_MODES)}.")
    base = GLAConfig() if mode == "gla" else GLAConfig.proxyclip()
    given = {name: value for name, value in explicit.items() if value is not None}
    layered = {**base.to_json(), **preset.attention, **given}
    return GLAConfig.from_json(layered)

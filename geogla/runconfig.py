"""The configuration of one run, as recorded in the run store."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from geogla.classes import ClassList
from geogla.errors import ConfigError
from geogla.gla import GLAConfig

#: Keys of :meth:`RunConfig.to_json` that change where or how fast a run goes, not its results.
_EXECUTION_ONLY = ("device",)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the scene.

    ``logit_scale`` multiplies the cosine logits before the softmax over prompts (40 for ProxyCLIP
    and GLA, method.md section 4).  ``batch_size`` windows are encoded per task and ``block`` is the
    side of the output blocks the class raster is stitched and written in.
    """

    classes: ClassList
    model: str = "default"
    weights: str = "pretrained"
    clip_weights: str | None = None
    vfm_weights: str | None = None
    crop: int = 224
    stride: int = 112
    attention: GLAConfig = field(default_factory=GLAConfig)
    logit_scale: float = 40.0
    device: str = "auto"
    batch_size: int = 8
    block: int = 1024

    def __post_init__(self) -> None:
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

    def with_(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"classes": self.classes.to_json(), "model": self.model, "weights": self.weights,
                "clip_weights": self.clip_weights, "vfm_weights": self.vfm_weights, "crop": self.crop,
                "stride": self.stride, "attention": self.attention.to_json(), "logit_scale": self.logit_scale,
                "device": self.device, "batch_size": self.batch_size, "block": self.block}

    def result_json(self) -> dict[str, Any]:
        """:meth:`to_json` less the settings that do not change the results."""
        return {k: v for k, v in self.to_json().items() if k not in _EXECUTION_ONLY}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunConfig:
        return cls(classes=ClassList.from_json(d["classes"]), model=d["model"], weights=d["weights"],
                   clip_weights=d.get("clip_weights"), vfm_weights=d.get("vfm_weights"), crop=int(d["crop"]),
                   stride=int(d["stride"]), attention=GLAConfig.from_json(d["attention"]),
                   logit_scale=float(d["logit_scale"]), device=d.get("device", "auto"),
                   batch_size=int(d["batch_size"]), block=int(d["block"]))

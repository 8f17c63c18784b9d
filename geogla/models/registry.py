"""Named model presets, read from ``configs/models.yaml``.

A preset pairs a CLIP (values, projection, text) with a vision foundation model (keys), or with
none (the keys are then CLIP's own last-block queries), and says how each encoder is normalised,
which layer gives the keys, which crop/stride the method uses by default and which attention
settings the pairing needs.  Adding a backbone is a new entry in the YAML file, not a new code
path: every entry is built by the same two builders (:mod:`geogla.models.clip` through open_clip,
:mod:`geogla.models.vfm` through timm).

The YAML file (``version: 1``) has one mapping ``presets``; each entry is::

    <name>:
      description: str
      crop: int                   # default window side in pixels; a multiple of the key patch
      stride: int                 # default window stride in pixels
      random_only: bool           # optional (false): no published weights exist (test presets)
      attention: {}               # optional; GLAConfig fields this preset changes, e.g. {smoothing: true}
      clip:
        arch: str                 # open_clip model config name, e.g. ViT-B-16
        pretrained: str | null    # open_clip pretrained tag, e.g. openai (null: none published)
        patch: int                # patch side; checked against the built model
        quick_gelu: bool | null   # optional; null follows the pretrained tag (OpenAI weights use QuickGELU)
        norm: openai | imagenet | inception | {mean: [r, g, b], std: [r, g, b]}
        overrides: {}             # optional; deep-merged into the open_clip config (vision_cfg, ...)
      vfm:                        # or `none`: keys from CLIP's last-block queries (ClearCLIP style)
        kind: timm                # the only kind so far
        name: str                 # timm model name with pretrained tag, e.g. vit_base_patch8_224.dino
        patch: int                # patch side; checked against the built model
        layer: int                # optional (-1): block whose output gives the keys, after the final norm
        norm: openai | imagenet | inception | {mean: [...], std: [...]}
        kwargs: {}                # optional; extra keyword arguments for timm.create_model

Every window is padded, centred, to a canvas whose sides are multiples of :attr:`ModelPreset.pad_to`
(56 pixels for DINO ViT-B/8, as in the reference), filled with CLIP's mean colour
(:attr:`ModelPreset.pad_colour`).  The keys fix the token grid: the canvas in patches of the VFM (of
CLIP without a VFM).  CLIP sees the same canvas; its values are computed on CLIP's own grid and
resized bilinearly to the key grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from geogla.errors import ConfigError
from geogla.grid import REFERENCE_PAD_MULTIPLE, WindowGrid

MODELS_YAML = "models.yaml"  #: file name of the preset registry inside the configs folder

# Normalisation constants by name; the values are open_clip's / timm's constants, spelled out so
# that reading a preset needs neither library.
NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "openai": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

VFM_KINDS = ("timm",)  #: encoder libraries a VFM entry may name
NO_VFM = "none"  #: ``vfm: none``: the keys are CLIP's own last-block queries
KEYS_VFM = "vfm"  #: :attr:`ModelPreset.keys` when a VFM gives the keys
KEYS_CLIP_Q = "clip-q"  #: :attr:`ModelPreset.keys` when CLIP's last-block queries give the keys


def config_dir() -> Path:
    """Return the folder of geogla's configuration files.

    An installed wheel carries them as ``geogla/_configs``; a source checkout has them in the
    repository-root ``configs`` folder next to the ``geogla`` package.  The wheel location is tried
    first so that an unrelated ``configs`` folder in ``site-packages`` is never picked up.
    """
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_configs", package.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"geogla's configuration folder was not found at {package / '_configs'} "
                      f"or {package.parent / 'configs'}; reinstall geogla.")


def find_config_file(name: str) -> Path:
    """Return the path of configuration file ``name`` (e.g. ``models.yaml``) or raise ConfigError."""
    path = config_dir() / name
    if not path.is_file():
        raise ConfigError(f"The configuration file {path} does not exist; reinstall geogla.")
    return path


@dataclass(frozen=True)
class ClipSpec:
    """The CLIP of a preset: an open_clip architecture and pretrained tag."""

    arch: str
    pretrained: str | None
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quick_gelu: bool | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``CLIP ViT-B-16 (openai)``."""
        return f"CLIP {self.arch} ({self.pretrained or 'no published weights'})"

    @property
    def file_stem(self) -> str:
        """Stem of the weight file in ``$GEOGLA_WEIGHTS_DIR/clip``: ``<arch>-<tag>``."""
        return f"{self.arch}-{self.pretrained}" if self.pretrained else self.arch


@dataclass(frozen=True)
class VfmSpec:
    """The vision foundation model of a preset (the keys)."""

    kind: str
    name: str
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    layer: int = -1  #: block whose output (after the final norm) gives the keys; negative counts from the end

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``VFM vit_base_patch8_224.dino``."""
        return f"VFM {self.name}"

    @property
    def file_stem(self) -> str:
        """Stem of the weight file in ``$GEOGLA_WEIGHTS_DIR/vfm``: the timm name with its tag."""
        return self.name


@dataclass(frozen=True)
class ModelPreset:
    """One named pairing of CLIP and a VFM (or no VFM) with its default crop, stride and attention."""

    name: str
    description: str
    clip: ClipSpec
    vfm: VfmSpec | None
    crop: int
    stride: int
    random_only: bool = False
    attention: Mapping[str, Any] = field(default_factory=dict)  #: GLAConfig fields this preset sets

    @property
    def keys(self) -> str:
        """Where the keys come from: :data:`KEYS_VFM` or, without a VFM, :data:`KEYS_CLIP_Q`."""
        return KEYS_VFM if self.vfm is not None else KEYS_CLIP_Q

    @property
    def key_patch(self) -> int:
        """Patch side of the encoder that gives the keys; it sets the token grid."""
        return self.vfm.patch if self.vfm is not None else self.clip.patch

    @property
    def pad_to(self) -> int:
        """Windows are padded, centred, to canvases whose sides are multiples of this many pixels:
        the reference's 56 (:data:`geogla.grid.REFERENCE_PAD_MULTIPLE`, a multiple of DINO's 8 and
        DINOv2's 14 pixel patches), or its least common multiple with the key encoder's patch, so
        that the keys tile the canvas exactly."""
        return math.lcm(REFERENCE_PAD_MULTIPLE, self.key_patch)

    @property
    def pad_colour(self) -> tuple[float, float, float]:
        """RGB in [0, 1] that padding and nodata pixels are filled with: CLIP's normalisation
        mean, so that they are 0 after CLIP's normalisation, as the reference's zero padding of
        the normalised image (its DINO input is that image un- and re-normalised)."""
        return self.clip.mean

    def window_grid(self, height: int, width: int, crop: int, stride: int) -> WindowGrid:
        """The windows of a ``height`` x ``width`` working image, padded to this preset's canvases."""
        return WindowGrid(height, width, crop, stride, pad_to=self.pad_to)


# --------------------------------------------------------------------------------------------
# parsing


def _where(preset: str, key: str) -> str:
    return f"preset '{preset}' in {MODELS_YAML}: {key}"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"In {where} must be a mapping.")
    return value


def _check_keys(entry: dict[str, Any], required: set[str], optional: set[str], where: str) -> None:
    missing = sorted(required - entry.keys())
    if missing:
        raise ConfigError(f"In {where} the key(s) {', '.join(missing)} are missing.")
    unknown = sorted(entry.keys() - required - optional)
    if unknown:
        raise ConfigError(f"In {where} the key(s) {', '.join(unknown)} are unknown "
                          f"(allowed: {', '.join(sorted(required | optional))}).")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"In {where} must be a non-empty string.")
    return value


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"In {where} must be a positive integer, not {value!r}.")
    return value


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    ok = (isinstance(value, list | tuple) and len(value) == 3
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    if not ok:
        raise ConfigError(f"In {where} must be a list of three numbers.")
    return (float(value[0]), float(value[1]), float(value[2]))


def _norm(value: Any, where: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if isinstance(value, str):
        if value not in NORMALISATIONS:
            raise ConfigError(f"In {where} names an unknown normalisation '{value}' "
                              f"(known: {', '.join(NORMALISATIONS)}).")
        return NORMALISATIONS[value]
    entry = _mapping(value, where)
    _check_keys(entry, {"mean", "std"}, set(), where)
    mean, std = _triple(entry["mean"], f"{where}.mean"), _triple(entry["std"], f"{where}.std")
    if min(std) <= 0:
        raise ConfigError(f"In {where}.std every value must be positive.")
    return mean, std


def _parse_clip(value: Any, preset: str) -> ClipSpec:
    where = _where(preset, "clip")
    entry = _mapping(value, where)
    _check_keys(entry, {"arch", "pretrained", "patch", "norm"}, {"quick_gelu", "overrides"}, where)
    tag = entry["pretrained"]
    if tag is not None:
        tag = _str(tag, f"{where}.pretrained")
    quick_gelu = entry.get("quick_gelu")
    if quick_gelu is not None and not isinstance(quick_gelu, bool):
        raise ConfigError(f"In {where}.quick_gelu must be true, false or null.")
    mean, std = _norm(entry["norm"], f"{where}.norm")
    return ClipSpec(arch=_str(entry["arch"], f"{where}.arch"), pretrained=tag,
                    patch=_positive_int(entry["patch"], f"{where}.patch"), mean=mean, std=std,
                    quick_gelu=quick_gelu, overrides=_mapping(entry.get("overrides"), f"{where}.overrides"))


def _parse_vfm(value: Any, preset: str) -> VfmSpec | None:
    where = _where(preset, "vfm")
    if value is None or value == NO_VFM:
        return None
    entry = _mapping(value, where)
    _check_keys(entry, {"kind", "name", "patch", "norm"}, {"kwargs", "layer"}, where)
    kind = _str(entry["kind"], f"{where}.kind")
    if kind not in VFM_KINDS:
        raise ConfigError(f"In {where}.kind '{kind}' is not supported (supported: {', '.join(VFM_KINDS)}).")
    layer = entry.get("layer", -1)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ConfigError(f"In {where}.layer must be a whole number (-1: the last block), not {layer!r}.")
    mean, std = _norm(entry["norm"], f"{where}.norm")
    return VfmSpec(kind=kind, name=_str(entry["name"], f"{where}.name"),
                   patch=_positive_int(entry["patch"], f"{where}.patch"), mean=mean, std=std,
                   kwargs=_mapping(entry.get("kwargs"), f"{where}.kwargs"), layer=layer)


def _parse_attention(value: Any, preset: str) -> Mapping[str, Any]:
    """The preset's GLAConfig overrides, checked by building a GLAConfig from them."""
    from geogla.gla.config import GLAConfig

    where = _where(preset, "attention")
    entry = _mapping(value, where)
    unknown = sorted(entry.keys() - {f.name for f in fields(GLAConfig)})
    if unknown:
        raise ConfigError(f"In {where} the GLA option(s) {', '.join(unknown)} are unknown.")
    try:
        GLAConfig(**entry)
    except ConfigError as exc:
        raise ConfigError(f"In {where}: {exc}") from exc
    return MappingProxyType(dict(entry))


def _parse_preset(name: str, value: Any) -> ModelPreset:
    where = _where(name, "the entry")
    entry = _mapping(value, where)
    _check_keys(entry, {"description", "crop", "stride", "clip", "vfm"}, {"random_only", "attention"}, where)
    random_only = entry.get("random_only", False)
    if not isinstance(random_only, bool):
        raise ConfigError(f"In {_where(name, 'random_only')} must be true or false.")
    preset = ModelPreset(name=name, description=_str(entry["description"], _where(name, "description")),
                         clip=_parse_clip(entry["clip"], name), vfm=_parse_vfm(entry["vfm"], name),
                         crop=_positive_int(entry["crop"], _where(name, "crop")),
                         stride=_positive_int(entry["stride"], _where(name, "stride")),
                         random_only=random_only, attention=_parse_attention(entry.get("attention"), name))
    if not random_only and preset.clip.pretrained is None:
        raise ConfigError(f"In {_where(name, 'clip.pretrained')} is null, so the preset must set "
                          "random_only: true.")
    if preset.stride > preset.crop:
        raise ConfigError(
            f"In {_where(name, 'stride')} {preset.stride} is larger than the crop {preset.crop}."
        )
    return preset


def parse_presets(text: str, source: str = MODELS_YAML) -> dict[str, ModelPreset]:
    """Parse the YAML text of a preset registry; raise ConfigError naming the first problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML ({exc}).") from exc
    doc = _mapping(doc, source)
    if doc.get("version") != 1:
        raise ConfigError(f"{source} must declare version: 1.")
    entries = _mapping(doc.get("presets"), f"{source}: presets")
    if not entries:
        raise ConfigError(f"{source} defines no presets.")
    return {name: _parse_preset(name, value) for name, value in entries.items()}


@lru_cache(maxsize=8)
def load_presets(path: Path | None = None) -> Mapping[str, ModelPreset]:
    """Read the preset registry (default: ``configs/models.yaml``); cached per path, read-only."""
    path = path if path is not None else find_config_file(MODELS_YAML)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"The preset file {path} cannot be read ({exc.strerror}).") from exc
    return MappingProxyType(parse_presets(text, source=str(path)))


def list_presets() -> list[str]:
    """Names of the known presets, in file order."""
    return list(load_presets())


def get_preset(name: str) -> ModelPreset:
    """Return preset ``name``; an unknown name raises ConfigError listing the known ones."""
    presets = load_presets()
    if name not in presets:
        raise ConfigError(f"Unknown model preset '{name}'; known presets: {', '.join(presets)}.")
    return presets[name]

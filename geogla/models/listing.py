"""``geogla models``: the presets with their sizes, memory per window and where their weights are.

Sizes come from each preset's architecture built on the ``meta`` device
(:func:`geogla.models.factory.create_meta_model`): exact parameter counts and feature widths
without allocating or initialising any weight, a fraction of a second per preset.  Weight
lookups never download (:mod:`geogla.models.weights`, ``download=False``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from geogla.errors import WeightsError
from geogla.models.factory import create_meta_model
from geogla.models.registry import (
    MODELS_YAML,
    NORMALISATIONS,
    ClipSpec,
    ModelPreset,
    VfmSpec,
    find_config_file,
    get_preset,
    list_presets,
)
from geogla.models.weights import (
    WEIGHTS_DIR_ENV,
    WeightsSource,
    library_source,
    resolve_clip,
    resolve_vfm,
    weights_dir,
)
from geogla.store import window_bytes

FLOAT32_BYTES = 4  #: the encoders' parameters in float32
MIB = 2**20
GIB = 2**30
WIDTH = 110  #: detail lines are wrapped to this many characters


@dataclass(frozen=True)
class PresetSummary:
    """Sizes of one preset at its default crop, from its architecture (no weights needed)."""

    preset: ModelPreset
    clip_image_params: int
    clip_text_params: int
    vfm_params: int  #: 0 without a VFM
    vfm_depth: int  #: number of VFM blocks (0 without a VFM)
    key_dim: int
    value_dim: int
    embed_dim: int
    tokens: tuple[int, int]  #: key (and value) grid of a window at the default crop
    clip_grid: tuple[int, int]  #: CLIP's own grid of a window at the default crop

    @property
    def params(self) -> int:
        """All parameters the pipeline loads: CLIP's image and text towers and the VFM."""
        return self.clip_image_params + self.clip_text_params + self.vfm_params

    @property
    def parameter_bytes(self) -> int:
        """Memory of the encoders' parameters in float32."""
        return self.params * FLOAT32_BYTES

    @property
    def window_bytes(self) -> tuple[int, int, int]:
        """Bytes of one window's keys, values (on CLIP's grid) and features in the run store."""
        return window_bytes(self.tokens, self.clip_grid, self.key_dim, self.value_dim, self.embed_dim)


def summarize(preset: str | ModelPreset) -> PresetSummary:
    """Parameter counts, widths and grids of ``preset`` (a name or a :class:`ModelPreset`)."""
    model = create_meta_model(preset)
    p = model.preset
    clip_model = model.clip.model
    image = sum(t.numel() for t in clip_model.visual.parameters())
    everything = sum(t.numel() for t in clip_model.parameters())
    vfm = sum(t.numel() for t in model.vfm.model.parameters()) if model.vfm is not None else 0
    canvas = p.window_grid(
        p.crop, p.crop, p.crop, p.stride
    ).canvas  # a window of a scene at least a crop wide
    return PresetSummary(preset=p, clip_image_params=image, clip_text_params=everything - image,
                         vfm_params=vfm, vfm_depth=model.vfm.depth if model.vfm is not None else 0,
                         key_dim=model.key_dim, value_dim=model.value_dim, embed_dim=model.embed_dim,
                         tokens=model.token_grid(canvas.height, canvas.width),
                         clip_grid=model.clip.grid(canvas.height, canvas.width))


def _grid(rows_cols: tuple[int, int]) -> str:
    return f"{rows_cols[0]}x{rows_cols[1]}"


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M"


def _norm_name(mean: tuple[float, float, float], std: tuple[float, float, float]) -> str:
    for name, (m, s) in NORMALISATIONS.items():
        if (m, s) == (mean, std):
            return name
    return f"mean {list(mean)}, std {list(std)}"


def _keys_label(preset: ModelPreset) -> str:
    return preset.vfm.name if preset.vfm is not None else "none: CLIP last-block queries"


def _source_line(spec: ClipSpec | VfmSpec, source: WeightsSource | None, random_only: bool) -> str:
    if source is not None:
        return f"{spec.label}: found, {source}"
    if random_only:
        return f"{spec.label}: no published weights (test preset; use --weights random)"
    subdir, option = ("clip", "--clip-weights") if isinstance(spec, ClipSpec) else ("vfm", "--vfm-weights")
    origin = library_source(spec)
    hub = f", or the Hugging Face cache entry of {origin}" if origin and origin.startswith("hf-hub:") else ""
    return (f"{spec.label}: not found; provide {option} PATH, "
            f"${WEIGHTS_DIR_ENV}/{subdir}/{spec.file_stem}.safetensors{hub}")


def _weights_lines(preset: ModelPreset) -> list[str]:
    """One line per encoder: where its weights were found, or how to provide them offline."""
    pairs: list[tuple[ClipSpec | VfmSpec, WeightsSource | None]] = []
    try:
        pairs.append((preset.clip, resolve_clip(preset.clip, None, download=False)))
        if preset.vfm is not None:
            pairs.append((preset.vfm, resolve_vfm(preset.vfm, None, download=False)))
    except WeightsError as exc:  # a bad $GEOGLA_WEIGHTS_DIR: said once in the footer
        return [f"weights: not looked up ({exc})"]
    return [_source_line(spec, source, preset.random_only) for spec, source in pairs]


def _table(summaries: Sequence[PresetSummary]) -> list[str]:
    header = ("preset", "keys (VFM)", "CLIP", "crop/stride", "grid", "params", "weights mem", "per window")
    rows = [header]
    for s in summaries:
        p = s.preset
        clip = f"{p.clip.arch} {p.clip.pretrained or '(random)'}"
        rows.append((p.name, _keys_label(p), clip, f"{p.crop}/{p.stride}",
                     _grid(s.tokens), _millions(s.params),
                     f"{s.parameter_bytes / GIB:.2f} GiB", f"{sum(s.window_bytes) / MIB:.2f} MiB"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _details(s: PresetSummary) -> list[str]:
    p = s.preset
    keys, values, features = (b / MIB for b in s.window_bytes)
    clip = (f"  {p.clip.label}: {_millions(s.clip_image_params + s.clip_text_params)} parameters (image "
            f"{_millions(s.clip_image_params)}, text {_millions(s.clip_text_params)}), patch {p.clip.patch}, "
            f"norm {_norm_name(p.clip.mean, p.clip.std)}; values {s.value_dim}-d from its last block on a "
            f"{_grid(s.clip_grid)} grid, embeddings {s.embed_dim}-d")
    if p.vfm is not None:
        block = p.vfm.layer + s.vfm_depth if p.vfm.layer < 0 else p.vfm.layer
        key_source = (f"  {p.vfm.label}: {_millions(s.vfm_params)} parameters, patch {p.vfm.patch}, norm "
                      f"{_norm_name(p.vfm.mean, p.vfm.std)}; keys {s.key_dim}-d from block {block + 1} of "
                      f"{s.vfm_depth} (after the final norm, class/register tokens dropped)")
    else:
        key_source = (f"  no VFM: keys are CLIP's last-block queries ({s.key_dim}-d, q-q similarity), "
                      "values on the same grid")
    resize = "" if s.clip_grid == s.tokens else f" (CLIP's {_grid(s.clip_grid)} values resized bilinearly)"
    grid = (f"  crop {p.crop} / stride {p.stride}: {_grid(s.tokens)} tokens per window{resize}; windows are "
            f"padded, centred, to multiples of {p.pad_to} pixels")
    memory = (f"  memory: {s.parameter_bytes / GIB:.2f} GiB of encoder parameters (float32); per window "
              f"{keys + values + features:.2f} MiB in the run store (keys {keys:.2f} + values {values:.2f} "
              f"+ features {features:.2f})")
    lines = [f"{p.name}: {p.description}", clip, key_source, grid, memory]
    if p.attention:
        settings = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                             for k, v in p.attention.items())
        lines.append(f"  attention: {settings} (explicit command-line options win)")
    lines.extend(f"  {line}" for line in _weights_lines(p))
    return lines


def _footer() -> list[str]:
    from huggingface_hub import constants

    try:
        root = weights_dir()
        where = f"set to {root}" if root is not None else "unset"
    except WeightsError as exc:
        where = f"unusable: {exc}"
    env = f"${WEIGHTS_DIR_ENV}"
    local = (f"  2. {env}/clip/<arch>-<tag>.safetensors and {env}/vfm/<timm name>.safetensors "
             f"(.bin, .pt, .pth also work; {env} is {where});")
    cache = (f"  3. the Hugging Face cache open_clip and timm use ({constants.HF_HUB_CACHE}), filled by one "
             "run with network access or copied from a machine that has it.")
    return ["Weights are looked up in this order (listing never downloads):",
            "  1. --clip-weights PATH / --vfm-weights PATH (geogla run, geogla eval);", local, cache,
            "Offline without weights, use --weights random: same compute, meaningless labels."]


def models_text(names: Sequence[str] | None = None) -> str:
    """The text of ``geogla models``: a table of the presets (all, or ``names``), details and
    weight sources per preset, and how to provide weights offline.

    An unknown name raises ConfigError listing the known ones.
    """
    presets = [get_preset(n) for n in (names or list_presets())]
    summaries = [summarize(p) for p in presets]
    intro = (f"Model presets ({find_config_file(MODELS_YAML)}); pick one with --model NAME. Sizes are the "
             "architectures' (float32); per window: keys + values + features in the run store at the "
             "preset's crop.")
    lines = [*_wrap([intro]), "", *_table(summaries)]
    for s in summaries:
        lines += ["", *_wrap(_details(s))]
    lines += ["", *_wrap(_footer())]
    return "\n".join(lines)


def _wrap(lines: Sequence[str]) -> list[str]:
    """Lines wrapped to :data:`WIDTH`, continuations indented two spaces more than the line."""
    out: list[str] = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        out += textwrap.wrap(line, width=WIDTH, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False) or [""]
    return out

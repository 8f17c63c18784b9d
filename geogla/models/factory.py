"""``create_model``: one factory that turns a preset name into a frozen :class:`SegmentationModel`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal

import torch

from geogla.errors import ConfigError
from geogla.models.clip import ClipEncoder, build_open_clip
from geogla.models.registry import ModelPreset, get_preset
from geogla.models.vfm import VfmEncoder, build_timm
from geogla.models.weights import RANDOM, RandomWeightsWarning, WeightsSource, find_weights
from geogla.precision import encoder_dtype
from geogla.store import StoreDims

log = logging.getLogger("geogla.models")

WeightsMode = Literal["pretrained", "random"]
PathLike = str | os.PathLike[str]


def text_templates() -> tuple[object, ...]:
    """The 80 OpenAI ImageNet prompt templates (callables ``name -> sentence``) from open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(OPENAI_IMAGENET_TEMPLATES)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; a device that is not available raises ConfigError."""
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"Unknown device '{device}'; use cpu, cuda, cuda:N or auto.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"Device '{device}' was requested but no CUDA GPU is available; "
                              "use --device cpu or --device auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"Device '{device}' does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s).")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"Device '{device}' was requested but MPS is not available; use --device cpu.")
    elif dev.type != "cpu":
        raise ConfigError(f"Device '{device}' is not supported; use cpu, cuda, cuda:N, mps or auto.")
    return dev


class SegmentationModel:
    """The frozen encoders of a preset, as the pipeline uses them.

    ``encode`` gives per-window keys (the VFM's patch tokens, or CLIP's last-block queries for a
    preset without VFM) and values (CLIP), both on the key grid; attention over windows happens
    elsewhere; ``project`` maps attended values to CLIP's embedding space; ``embed_text`` gives the
    class prompt embeddings.  Every method runs under ``torch.inference_mode``; the image encoders
    compute in :attr:`dtype` (``create_model``'s ``precision``), the text tower in float32, and
    keys, projected features and text embeddings come out float32.
    """

    def __init__(self, preset: ModelPreset, clip: ClipEncoder, vfm: VfmEncoder | None, device: torch.device,
                 weights: Mapping[str, WeightsSource]) -> None:
        if (vfm is None) != (preset.vfm is None):
            raise ValueError(f"preset '{preset.name}' and the encoders given disagree on the VFM.")
        self.preset = preset
        self.device = device
        self.clip = clip
        self.vfm = vfm
        self.weights: Mapping[str, WeightsSource] = MappingProxyType(dict(weights))
        self.key_dim: int = vfm.key_dim if vfm is not None else clip.value_dim
        self.value_dim: int = clip.value_dim
        self.embed_dim: int = clip.embed_dim
        self._templates = text_templates()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the image encoders compute in."""
        return self.clip.dtype

    @property
    def random_weights(self) -> bool:
        """True when at least one encoder runs with random weights (labels are then meaningless)."""
        return any(source.origin == RANDOM for source in self.weights.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{part}={source}" for part, source in self.weights.items())
        return f"SegmentationModel(preset={self.preset.name!r}, device={str(self.device)!r}, {parts})"

    def store_dims(self) -> StoreDims:
        """What a run store needs to know of this model (:meth:`geogla.store.RunStore.create_or_resume`):
        the canvas multiple, pixels per key and per value token and the widths of keys, values and
        embeddings."""
        return StoreDims(
            pad_to=self.preset.pad_to,
            token_size=self.preset.key_patch,
            value_token_size=self.preset.clip.patch,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            embed_dim=self.embed_dim,
        )

    @property
    def pad_colour(self) -> tuple[float, float, float]:
        """RGB in [0, 1] that canvas padding and nodata pixels are filled with (see
        :attr:`geogla.models.registry.ModelPreset.pad_colour`)."""
        return self.preset.pad_colour

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Key (and value) grid ``(rows, cols)`` of a ``height`` x ``width`` canvas: the canvas in
        patches of the encoder that gives the keys (224 -> 28 x 28 for DINO ViT-B/8, 14 x 14 for
        CLIP ViT-B/16 without VFM).  A canvas that is not a whole number of patches raises ValueError."""
        patch = self.preset.key_patch
        if height <= 0 or width <= 0 or height % patch or width % patch:
            raise ValueError(f"a {height} x {width} canvas is not a whole number of {patch}-pixel patches.")
        return height // patch, width // patch

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, h, w) tensor, not {shape}.")
        self.token_grid(int(images.shape[2]), int(images.shape[3]))
        return images.to(device=self.device, dtype=torch.float32)

    @torch.inference_mode()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys (B, N, key_dim), L2-normalised, of RGB canvases in [0, 1] (B, 3, h, w)."""
        images = self._check_images(images)
        return self.vfm.keys(images) if self.vfm is not None else self.clip.queries(images)

    @torch.inference_mode()
    def encode_values(self, images: torch.Tensor, on_vfm_grid: bool = True) -> torch.Tensor:
        """Values (B, N, value_dim) on the key grid (or, with ``on_vfm_grid=False``, on CLIP's own grid).

        Without a VFM the key grid is CLIP's grid, so both give the same values.
        """
        images = self._check_images(images)
        grid = self.token_grid(int(images.shape[2]), int(images.shape[3])) if on_vfm_grid else None
        return self.clip.values(images, grid)

    @torch.inference_mode()
    def encode(
        self, images: torch.Tensor, values_on_clip_grid: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, N, key_dim), L2-normalised, and values (B, N, value_dim) of RGB canvases in
        [0, 1] (B, 3, h, w); ``N = rows * cols`` of :meth:`token_grid`, row-major.

        With ``values_on_clip_grid`` the values stay on CLIP's own grid (:meth:`value_grid`; a run
        store keeps them so, 4x fewer at ViT-B/16 with DINO B/8, and resizes them when it reads
        them).  Without a VFM, keys and values come from one pass through CLIP.
        """
        images = self._check_images(images)
        grid = None if values_on_clip_grid else self.token_grid(int(images.shape[2]), int(images.shape[3]))
        if self.vfm is None:
            return self.clip.queries_and_values(images, grid)
        return self.vfm.keys(images), self.clip.values(images, grid)

    def value_grid(self, height: int, width: int) -> tuple[int, int]:
        """CLIP's own grid ``(rows, cols)`` of a ``height`` x ``width`` canvas (whole patches)."""
        return self.clip.grid(height, width)

    @torch.inference_mode()
    def project(self, attended: torch.Tensor) -> torch.Tensor:
        """(B, N, value_dim) -> (B, N, embed_dim): CLIP's out_proj, ln_post, proj; not normalised."""
        if attended.shape[-1] != self.value_dim:
            raise ValueError(f"attended values must have {self.value_dim} channels, "
                             f"not {attended.shape[-1]}.")
        return self.clip.project(attended.to(device=self.device)).float()

    @torch.inference_mode()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """(P, embed_dim) unit-norm prompt embeddings, each averaged over the 80 OpenAI ImageNet templates."""
        if isinstance(prompts, str):
            raise TypeError("embed_text takes a sequence of prompts, not one string.")
        return self.clip.embed_text(list(prompts), self._templates)


def create_model(name: str | ModelPreset = "default", weights: WeightsMode | str = "pretrained",
                 clip_weights: PathLike | None = None, vfm_weights: PathLike | None = None,
                 device: str | torch.device = "cpu", seed: int = 0,
                 precision: str = "float32") -> SegmentationModel:
    """Build preset ``name`` (a registry name or a :class:`ModelPreset`): frozen, eval mode.

    ``weights="pretrained"`` finds each encoder's weights (explicit path, ``$GEOGLA_WEIGHTS_DIR``,
    the libraries' caches, a download unless offline) and raises WeightsError when one is missing.
    ``weights="random"`` builds the same architectures with random weights seeded by ``seed``
    (reproducible) and warns loudly with :class:`RandomWeightsWarning`; explicit paths are still
    loaded.  ``device`` is ``cpu``, ``cuda[:N]``, ``mps`` or ``auto``.  ``precision``
    (:func:`geogla.precision.encoder_dtype`: ``float32``, ``bfloat16``, ``float16`` or ``auto``) is
    the dtype of the image encoders' weights and activations; the text tower stays float32.
    """
    preset = name if isinstance(name, ModelPreset) else get_preset(name)
    clip_src, vfm_src = find_weights(preset, weights, clip_weights, vfm_weights)
    dev = resolve_device(device)

    dtype = encoder_dtype(precision, dev)
    clip_model = build_open_clip(preset.clip, clip_src.path if clip_src else None, seed)
    clip_model.visual.to(dtype)  # the text tower stays float32: its cost is small, its output shared
    sources = {"clip": clip_src or WeightsSource(RANDOM)}
    vfm: VfmEncoder | None = None
    if preset.vfm is not None:
        vfm_model = build_timm(preset.vfm, vfm_src.path if vfm_src else None, seed)
        vfm = VfmEncoder(vfm_model.to(dtype), preset.vfm, dev)
        sources["vfm"] = vfm_src or WeightsSource(RANDOM)
    model = SegmentationModel(preset, ClipEncoder(clip_model, preset.clip, dev), vfm, dev, sources)
    random_parts = [part.upper() for part, src in sources.items() if src.origin == RANDOM]
    if random_parts:
        message = (f"Preset '{preset.name}' runs with RANDOM {' and '.join(random_parts)} weights: "
                   "its labels are meaningless and exist only to exercise or benchmark the pipeline.")
        warnings.warn(message, RandomWeightsWarning, stacklevel=2)
    for part, src in sources.items():
        log.debug("%s weights: %s", part, src)
    return model


def create_meta_model(name: str | ModelPreset = "default") -> SegmentationModel:
    """Build preset ``name``'s architecture on the ``meta`` device: no storage, no weights, no warning.

    It takes a fraction of a second even for ViT-L, and serves parameter counts and shape checks
    (``encode`` on meta tensors gives the real output shapes); its outputs have no values.
    """
    preset = name if isinstance(name, ModelPreset) else get_preset(name)
    meta = torch.device("meta")
    sources = {"clip": WeightsSource(RANDOM)}
    vfm: VfmEncoder | None = None
    with meta:  # parameters are created on meta, so no random initialisation is computed
        clip = ClipEncoder(build_open_clip(preset.clip, None, 0, device=meta), preset.clip, meta)
        if preset.vfm is not None:
            vfm = VfmEncoder(build_timm(preset.vfm, None, 0), preset.vfm, meta)
            sources["vfm"] = WeightsSource(RANDOM)
    return SegmentationModel(preset, clip, vfm, meta, sources)

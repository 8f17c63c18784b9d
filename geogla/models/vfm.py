"""The vision foundation model that gives the keys (method.md section 2), built through timm.

The keys are the output of the last block after the model's final norm (``forward_features``),
patch tokens only (class and register tokens dropped: timm puts its ``num_prefix_tokens`` first,
for DINOv2 with registers and for DINOv3's RoPE ViT alike), L2-normalised over channels.  A preset
may name another block (``vfm.layer``); its output goes through the same final norm (timm's
``forward_intermediates``).  Crops other than the trained size use timm's ``dynamic_img_size``
(positional embedding resampled per call; RoPE models compute their rotations per grid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from geogla.errors import ConfigError
from geogla.models.clip import loading
from geogla.models.registry import VfmSpec


def build_timm(spec: VfmSpec, weights_file: Path | None, seed: int) -> nn.Module:
    """Build ``spec``'s timm model, seeded, loading ``weights_file`` through timm when given.

    Passing the file as ``pretrained_cfg_overlay`` lets timm apply the model's own checkpoint
    filter, so original releases (e.g. DINO's ``.pth``) load as well as timm's files.  Inside
    ``torch.device("meta")`` the model is built without storage.
    """
    import timm

    if not timm.is_model(spec.name):
        raise ConfigError(f"timm has no model named '{spec.name}' (preset vfm.name).")
    kwargs = {"num_classes": 0, "dynamic_img_size": True, **spec.kwargs}
    if weights_file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with loading(spec.label, weights_file):
                model = timm.create_model(spec.name, pretrained=weights_file is not None, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"timm cannot build '{spec.name}' with the preset's kwargs ({exc}).") from exc
    assert isinstance(model, nn.Module)
    return model


class VfmEncoder:
    """A frozen timm ViT seen as the key encoder."""

    def __init__(self, model: nn.Module, spec: VfmSpec, device: torch.device) -> None:
        patch_embed = getattr(model, "patch_embed", None)
        patch = getattr(patch_embed, "patch_size", None)
        if patch is None or not hasattr(model, "forward_features"):
            raise ConfigError(f"{spec.label} is not a ViT with patch tokens, which the keys need.")
        if tuple(patch) != (spec.patch, spec.patch):
            raise ConfigError(f"{spec.label} has patches of {tuple(patch)}, but the preset says "
                              f"{spec.patch}.")
        self.spec = spec
        self.device = device
        # Any: timm models set their attributes dynamically (num_prefix_tokens, num_features, ...).
        self.model: Any = cast(Any, model.to(device).eval().requires_grad_(False))
        self.num_prefix_tokens: int = int(getattr(self.model, "num_prefix_tokens", 1))
        self.key_dim: int = int(getattr(self.model, "num_features", 0) or self.model.embed_dim)
        self.depth: int = len(getattr(self.model, "blocks", ()))  # 0: not a timm ViT with .blocks
        self.layer: int = spec.layer + self.depth if spec.layer < 0 else spec.layer
        # The last block's output is forward_features itself, for any model; others need timm's
        # forward_intermediates.
        self._last = spec.layer == -1 or self.layer == self.depth - 1
        if not self._last and not 0 <= self.layer < self.depth:
            raise ConfigError(f"{spec.label} has {self.depth} blocks; the preset's layer {spec.layer} "
                              "is not one of them.")
        if not self._last and not hasattr(self.model, "forward_intermediates"):
            raise ConfigError(f"{spec.label} cannot give the output of block {spec.layer}; use layer: -1.")
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def grid_side(self, crop: int) -> int:
        """The VFM token grid side for a crop (224 -> 28 for DINO ViT-B/8)."""
        return crop // self.spec.patch

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm, (B, n*n, key_dim), not normalised."""
        x = (images - self._mean) / self._std
        if self._last:
            tokens = self.model.forward_features(x)[:, self.num_prefix_tokens:]
        else:
            # timm splits the prefix tokens off itself and stops after the block asked for.
            tokens = self.model.forward_intermediates(x, indices=[self.layer], norm=True, stop_early=True,
                                                      output_fmt="NLC", intermediates_only=True)[0]
        side = self.grid_side(images.shape[-1])
        if tokens.shape[1] != side * side:
            raise RuntimeError(f"{self.spec.label} returned {tokens.shape[1]} patch tokens for a "
                               f"{side} x {side} grid.")
        return tokens

    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys: patch tokens L2-normalised over channels, (B, n*n, key_dim), row-major."""
        return F.normalize(self.features(images).float(), dim=-1)

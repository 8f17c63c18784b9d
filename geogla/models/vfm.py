"""The vision foundation model that gives the keys (docs/method.md section 2), built through timm.

The keys are the output of the last block after the model's final norm (``forward_features``),
patch tokens only (class and register tokens dropped: timm puts its ``num_prefix_tokens`` first,
for DINOv2 with registers and for DINOv3's RoPE ViT alike), L2-normalised over channels.  A preset
may name another block (``vfm.layer``); its output goes through the same final norm (timm's
``forward_intermediates``).  Canvases other than the trained size use timm's ``dynamic_img_size``;
for ViTs with a learned positional embedding the resampling is replaced by the reference's
(:func:`geogla.models.positions.resample_grid`, as DINO and DINOv2 do it); RoPE models (DINOv3)
compute their rotations per grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from geogla.errors import ConfigError
from geogla.models.clip import loading
from geogla.models.positions import resample_grid
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
        _use_reference_positions(self.model)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (its weights')."""
        return cast(torch.dtype, self.model.patch_embed.proj.weight.dtype)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The VFM token grid of a ``height`` x ``width`` canvas (224 -> 28 x 28 for DINO ViT-B/8)."""
        return height // self.spec.patch, width // self.spec.patch

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm, (B, rows * cols, key_dim), not normalised."""
        x = ((images - self._mean) / self._std).to(self.dtype)  # normalised in float32
        if self._last:
            tokens = self.model.forward_features(x)[:, self.num_prefix_tokens:]
        else:
            # timm splits the prefix tokens off itself and stops after the block asked for.
            tokens = self.model.forward_intermediates(x, indices=[self.layer], norm=True, stop_early=True,
                                                      output_fmt="NLC", intermediates_only=True)[0]
        rows, cols = self.grid(int(images.shape[-2]), int(images.shape[-1]))
        if tokens.shape[1] != rows * cols:
            raise RuntimeError(f"{self.spec.label} returned {tokens.shape[1]} patch tokens for a "
                               f"{rows} x {cols} grid.")
        return cast(torch.Tensor, tokens)

    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys: patch tokens L2-normalised over channels, (B, n*n, key_dim), row-major."""
        return F.normalize(self.features(images).float(), dim=-1)


def _use_reference_positions(model: Any) -> None:
    """Make a timm ``VisionTransformer`` resample its learned positional embedding as the
    reference does (:mod:`geogla.models.positions`) instead of timm's antialiased resize.

    It replaces the model's ``_pos_embed`` step (on this instance only): patch tokens
    ``(B, rows, cols, C)`` get the resampled embedding, then the class and register tokens
    are put in front, with their own embedding where the model has one (``no_embed_class``
    False).  Other models (RoPE ViTs, models without a learned embedding) are left as they are.
    """
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or model.pos_embed is None or not model.dynamic_img_size:
        return
    vit: Any = model  # timm's attributes are typed loosely (pos_embed: Parameter | None)
    trained = tuple(int(s) for s in vit.patch_embed.grid_size)
    if trained[0] != trained[1]:
        return  # the reference's resampling assumes a square trained grid
    n_prefix = 0 if vit.no_embed_class else int(vit.num_prefix_tokens)
    cache: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}

    def positions(grid: tuple[int, int]) -> torch.Tensor:
        """``(1, n_prefix + rows * cols, C)`` embedding for a token grid, in the model's dtype."""
        key = (*grid, vit.pos_embed.dtype)
        found = cache.get(key)
        if found is None:
            pos = vit.pos_embed
            width = pos.shape[-1]
            trained_grid = pos[:, n_prefix:].reshape(1, *trained, width).permute(0, 3, 1, 2)
            resampled = resample_grid(trained_grid, grid).permute(0, 2, 3, 1).reshape(1, -1, width)
            found = cache[key] = torch.cat([pos[:, :n_prefix].float(), resampled], dim=1).to(pos.dtype)
        return found

    def pos_embed(x: torch.Tensor) -> torch.Tensor:
        batch, rows, cols, width = x.shape
        pos = positions((rows, cols))
        tokens = x.reshape(batch, rows * cols, width)
        prefix = [t.expand(batch, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if vit.no_embed_class:
            x = torch.cat([*prefix, tokens + pos], dim=1)
        else:
            x = torch.cat([*prefix, tokens], dim=1) + pos
        return cast(torch.Tensor, vit.pos_drop(x))

    vit._pos_embed = pos_embed

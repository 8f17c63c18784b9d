"""The CLIP side of the method: values, the output projection and text embeddings (docs/method.md section 2).

The vision tower runs blocks ``0..last-1`` unchanged.  Of the last block only ``ln_1`` and the value
part of the fused in-projection are used for the values; after attention (done elsewhere) the
block's ``out_proj`` is applied, then ``ln_post`` and ``proj``.  There is no residual connection
and no MLP in the last block.  Presets without a VFM also take the query part of the same
in-projection as the keys (ClearCLIP-style q-q similarity), from the same ``ln_1`` tokens.
"""

from __future__ import annotations

import copy
import logging
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from geogla.errors import ConfigError, WeightsError
from geogla.models.positions import resample_grid
from geogla.models.registry import ClipSpec

TEXT_BATCH = 256  #: text sequences per encode_text call (about three prompts' 80 templates)

# What a broken or mismatched checkpoint file raises while being read or loaded.
try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors ships with open_clip and timm
    class _SafetensorError(Exception):  # type: ignore[no-redef]
        """Placeholder when safetensors is absent."""

LOAD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, KeyError, OSError, EOFError,
                                                 pickle.UnpicklingError, zipfile.BadZipFile, _SafetensorError)


@contextmanager
def loading(label: str, weights_file: Path | None) -> Iterator[None]:
    """Report a library's failure to load ``weights_file`` into ``label`` as :class:`WeightsError`.

    Without a file nothing was loaded, so the failure is a real error and passes unchanged.
    """
    try:
        yield
    except LOAD_ERRORS as exc:
        if weights_file is None:
            raise
        raise WeightsError(f"The weights file {weights_file} cannot be loaded into {label} "
                           f"({first_line(exc)}).") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-sentence errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive, e.g. OpenAI's original ``ViT-B-16.pt``."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_torchscript(model: nn.Module, path: Path) -> None:
    """Load OpenAI's original TorchScript release, whose state-dict names are open_clip's."""
    with warnings.catch_warnings():
        # torch deprecates TorchScript; reading OpenAI's released file is still the way to use it.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    # Scalars OpenAI stores beside the weights, and the causal mask (a buffer open_clip rebuilds).
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        state.pop(key, None)
    model.load_state_dict(state, strict=True)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence open_clip's root-logger notices while it builds (its "initialized randomly" notice
    also installs a root handler); geogla reports random weights itself, once."""
    root = logging.getLogger()
    level, guard = root.level, logging.NullHandler()
    root.setLevel(logging.ERROR)
    root.addHandler(guard)  # logging.warning() calls basicConfig() on a root without handlers
    try:
        yield
    finally:
        root.removeHandler(guard)
        root.setLevel(level)


def build_open_clip(spec: ClipSpec, weights_file: Path | None, seed: int,
                    device: str | torch.device = "cpu") -> nn.Module:
    """Build ``spec``'s open_clip model, seeded, loading ``weights_file`` when given.

    A regular checkpoint goes through open_clip's own loader (``pretrained=PATH``), which converts
    third-party layouts and checks every key; a TorchScript archive is loaded here because open_clip
    refuses those with ``weights_only=True``.  ``device="meta"`` (inside ``torch.device("meta")``)
    builds the architecture without storage, for parameter counts and shape checks.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    base = open_clip.get_model_config(spec.arch)
    if base is None:
        raise ConfigError(f"open_clip has no model config named '{spec.arch}' (preset clip.arch).")
    merged = _deep_merge(base, spec.overrides)
    quick_gelu = spec.quick_gelu
    if quick_gelu is None:
        # The activation the weights were trained with: open_clip records it per pretrained tag.
        tag_cfg = get_pretrained_cfg(spec.arch, spec.pretrained) if spec.pretrained else {}
        quick_gelu = bool(tag_cfg.get("quick_gelu", merged.get("quick_gelu", False)))
    kwargs = {key: merged[key] for key in spec.overrides}
    kwargs["quick_gelu"] = quick_gelu
    scripted = weights_file is not None and _is_torchscript(weights_file)
    checkpoint = str(weights_file.resolve()) if weights_file is not None and not scripted else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with loading(spec.label, weights_file), _quiet_root_logger():
                model = open_clip.create_model(spec.arch, pretrained=checkpoint, device=device, **kwargs)
                if scripted:
                    assert weights_file is not None
                    _load_torchscript(model, weights_file)
        except TypeError as exc:
            raise ConfigError(f"The open_clip config of {spec.label} with its overrides is invalid "
                              f"({exc}).") from exc
    assert isinstance(model, nn.Module)
    return model


@lru_cache(maxsize=8)
def _tokenizer(arch: str, context_length: int) -> Any:
    """open_clip's tokenizer for ``arch`` (cached: reading the BPE vocabulary takes a while)."""
    import open_clip

    return open_clip.get_tokenizer(arch, context_length=context_length)


def resize_token_grid(tokens: torch.Tensor, grid: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """Row-major tokens ``(B, rows * cols, C)`` on ``grid`` resized bilinearly (align_corners=False)
    to the ``out`` grid, in float32 (unchanged when the grids agree): how CLIP's values reach the
    key grid, at encoding and when a run reads values stored on CLIP's grid."""
    if out == grid:
        return tokens
    width = tokens.shape[-1]
    spatial = tokens.transpose(1, 2).reshape(tokens.shape[0], width, *grid).float()
    spatial = F.interpolate(spatial, size=out, mode="bilinear", align_corners=False)
    return spatial.flatten(2).transpose(1, 2).contiguous()  # callers reshape per window


class ClipEncoder:
    """A frozen open_clip model seen as values, projection and text embeddings."""

    def __init__(self, model: nn.Module, spec: ClipSpec, device: torch.device) -> None:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ConfigError(f"{spec.label} is not a plain open_clip VisionTransformer, which the value "
                              "path needs.")
        last = visual.transformer.resblocks[-1]
        attn = getattr(last, "attn", None)
        if (not isinstance(last, ResidualAttentionBlock) or not isinstance(attn, nn.MultiheadAttention)
                or attn.in_proj_weight is None):
            raise ConfigError(f"The last block of {spec.label} has no fused in-projection, which the "
                              "value path needs.")
        if tuple(visual.patch_size) != (spec.patch, spec.patch):
            raise ConfigError(f"{spec.label} has patches of {tuple(visual.patch_size)}, but the preset "
                              f"says {spec.patch}.")
        if visual.grid_size[0] != visual.grid_size[1]:
            raise ConfigError(f"{spec.label} has a non-square positional grid {visual.grid_size}.")
        self.spec = spec
        self.device = device
        # Any: open_clip is untyped, and nn.Module attributes would type as Tensor | Module.
        self.model: Any = cast(Any, model.to(device).eval().requires_grad_(False))
        self.visual = visual
        self.last = last
        self.attn = attn
        self.batch_first: bool = getattr(visual.transformer, "batch_first", True)
        self.value_dim: int = int(attn.embed_dim)
        self.embed_dim: int = int(visual.proj.shape[1])
        self.tokenizer = _tokenizer(spec.arch, int(self.model.context_length))
        self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._truncatable_text = (
            all(hasattr(model, name) for name in ("token_embedding", "ln_final", "text_projection"))
            and getattr(model, "text_pool_type", None) == "argmax"
            and isinstance(getattr(model, "attn_mask", None), torch.Tensor))

    # -- vision ----------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the vision tower computes in (its weights'); the text tower stays float32."""
        return cast(torch.dtype, self.visual.conv1.weight.dtype)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """CLIP's token grid for a ``height`` x ``width`` canvas: whole patches only (224 -> 14 x 14
        for ViT-B/16).  The patch embedding drops a remainder of less than a patch, as the
        reference's does (its canvases are multiples of 56, not always of 16)."""
        p = self.spec.patch
        return height // p, width // p

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The positional embedding for a ``grid`` of tokens, class position first, float32.

        The trained grid is resampled as the reference does it
        (:func:`geogla.models.positions.resample_grid`); the class token's position is kept.
        Cached per grid.
        """
        cached = self._pos_cache.get(grid)
        if cached is not None:
            return cached
        pos = self.visual.positional_embedding.float()
        trained = int(self.visual.grid_size[0])
        if grid != (trained, trained):
            cls, trained_grid = pos[:1], pos[1:]
            width = trained_grid.shape[-1]
            trained_grid = trained_grid.reshape(1, trained, trained, width).permute(0, 3, 1, 2)
            resampled = resample_grid(trained_grid, grid)
            pos = torch.cat([cls, resampled.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)], dim=0)
        self._pos_cache[grid] = pos
        return cast(torch.Tensor, pos)

    def last_block_input(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens entering the last block, (B, 1 + gh*gw, width), class token first."""
        visual = self.visual
        x = ((images - self._mean) / self._std).to(self.dtype)  # normalised in float32
        x = visual.conv1(x)  # (B, width, gh, gw)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
        x = visual.patch_dropout(x)
        x = visual.ln_pre(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        return cast(torch.Tensor, x if self.batch_first else x.transpose(0, 1))

    def _in_proj(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Part ``part`` (0 query, 1 key, 2 value) of the last block's fused in-projection of ``x``."""
        width = self.value_dim
        assert self.attn.in_proj_weight is not None  # checked in __init__; narrows the type
        bias = self.attn.in_proj_bias
        rows = slice(part * width, (part + 1) * width)
        return F.linear(x, self.attn.in_proj_weight[rows], None if bias is None else bias[rows])

    def _last_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``ln_1`` of the last block's input, class token dropped after the norm, (B, g*g, width)."""
        return cast(torch.Tensor, self.last.ln_1(self.last_block_input(images))[:, 1:])

    def _to_grid(
        self, tokens: torch.Tensor, grid: tuple[int, int], out: tuple[int, int] | None
    ) -> torch.Tensor:
        return tokens if out is None else resize_token_grid(tokens, grid, out)

    def values(self, images: torch.Tensor, out: tuple[int, int] | None = None) -> torch.Tensor:
        """Values of the last block, (B, rows * cols, width), row-major.

        ``images`` are RGB canvases in [0, 1], (B, 3, h, w).  The values live on CLIP's grid and
        are resized bilinearly (align_corners=False) to the ``out`` grid (the key grid); None
        keeps CLIP's grid.
        """
        grid = self.grid(int(images.shape[-2]), int(images.shape[-1]))
        return self._to_grid(self._in_proj(self._last_tokens(images), 2), grid, out)

    def queries(self, images: torch.Tensor) -> torch.Tensor:
        """Keys of a preset without VFM: the last block's queries, L2-normalised per token,
        (B, gh*gw, width) on CLIP's grid, row-major."""
        return self.queries_and_values(images)[0]

    def queries_and_values(self, images: torch.Tensor,
                           out: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised queries (on CLIP's grid) and values (resized to the ``out`` grid) from one pass.

        Both come from the same ``ln_1`` tokens of the last block (class token normalised with the
        rest, then dropped); the queries are L2-normalised over channels.
        """
        x = self._last_tokens(images)
        grid = self.grid(int(images.shape[-2]), int(images.shape[-1]))
        q = F.normalize(self._in_proj(x, 0).float(), dim=-1)
        return q, self._to_grid(self._in_proj(x, 2), grid, out)

    def project(self, attended: torch.Tensor) -> torch.Tensor:
        """(B, N, width) -> (B, N, embed_dim): out_proj, ln_post, proj; no residual, no MLP."""
        # ls_1 is the attention branch's layer scale (Identity for OpenAI CLIP).
        x = self.last.ls_1(self.attn.out_proj(attended.to(self.dtype)))
        return cast(torch.Tensor, self.visual.ln_post(x) @ self.visual.proj)

    # -- text ------------------------------------------------------------------------------

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP text features (n, embed_dim) of tokenised texts, not normalised.

        For open_clip's own text tower (causal mask, pooled at the end-of-text token, which has the
        highest id) the padding after the longest text cannot change the pooled token, so it is
        cut off: prompts are 10 to 20 tokens of 77, which makes this about five times faster than
        ``encode_text`` with the same result.  Other text towers go through ``encode_text``.
        """
        m = self.model
        if not self._truncatable_text:
            return cast(torch.Tensor, m.encode_text(tokens))
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        x = m.token_embedding(tokens[:, :length]) + m.positional_embedding[:length]
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)[torch.arange(x.shape[0], device=x.device), eot]
        proj = m.text_projection
        return cast(torch.Tensor, proj(x) if isinstance(proj, nn.Module) else x @ proj)

    def embed_text(self, prompts: Sequence[str], templates: Sequence[Any]) -> torch.Tensor:
        """(P, embed_dim): per prompt, the re-normalised mean of its normalised template embeddings."""
        if not prompts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        texts = [template(p) if callable(template) else str(template).format(p)
                 for p in prompts for template in templates]
        tokens = self.tokenizer(texts)
        parts = [F.normalize(self.encode_tokens(tokens[i:i + TEXT_BATCH].to(self.device)).float(), dim=-1)
                 for i in range(0, len(texts), TEXT_BATCH)]
        per_template = torch.cat(parts).view(len(prompts), len(templates), -1)
        return F.normalize(per_template.mean(dim=1), dim=-1)

"""The run store: one Zarr v3 group per run holding every stage's inputs and outputs.

Layout (``L`` windows, ``N = rows * cols`` tokens per window (``token_grid``), ``P`` prompts,
``C`` classes, ``H`` x ``W`` the scene's file grid)::

    <run>.zarr/                  attrs["geogla"]: format, scene, config, grid, fingerprints
      windows/box       (L, 4)      int32    window (y1, x1, y2, x2) in working pixels
      windows/valid     (L,)        bool     False: window is all nodata, not encoded
      windows/encoded   (L,)        bool     per-window done flags of the encode stage
      windows/attended  (L,)        bool     per-window done flags of the attend stage
      keys              (L, N, Dk)  int16    VFM keys, L2-normalised, in units of key_scale
      key_scale         (L, N)      float32  per token: its largest key magnitude / 32767
      values            (L, Nv, Dv) float16  CLIP last-block value tokens on CLIP's own grid
                                             (``value_grid``, Nv tokens); resized to the key grid
                                             when read (:func:`geogla.models.clip.resize_token_grid`)
      summary/<field>               scalable attention's far summary of all keys (FarSample;
                                             an empty group for the other algorithms)
      features          (L, N, E)   float16  projected, L2-normalised features after attention
      text              (P, E)      float32  prompt embeddings
      classes           (H, W)      uint8    stitched class ids, 255 = nodata
      probabilities     (C, H, W)   uint8    class probability x 255 (only with save_probabilities)
      blocks/stitched   (B,)        bool     per-block done flags of the stitch stage
      done/<stage>                  empty groups marking finished stages (text, summary)

Every array names its dimensions (:data:`ARRAY_DIMS`: ``window``, ``token``, ``y``, ``x``, ...)
and says what it holds (:data:`ARRAY_ATTRS`), so that ``xarray.open_zarr`` opens the root's
arrays (and, with ``group=``, a subgroup's): the run's intermediate data, for inspection.

Window arrays are chunked (keys and values: sharded) by encode batch and the rasters by output
block, so that every task writes whole chunks (shards) that no other task touches.  Keys and
values hold one window per inner chunk, so attention reads single windows cheaply.  Done flags
are written after the data they mark.  Keys, values and features take 16 bits a number, stored
uncompressed (dense floats barely compress, and the store's size is then known before the run,
:func:`window_bytes`): the values and features as float16 (unit vectors and values far inside
its range; its 11 significant bits are 8x finer than bfloat16's), the keys as 16-bit integers
times a float32 scale per token (:func:`quantize_keys`), because the attention's similarities
and thresholds are sensitive to the keys' absolute error, which float16 makes 4 to 10 times
larger on their typical components.

Every chunk of the window arrays, the rasters and the text embeddings carries a CRC-32C (zarr's
``crc32c`` codec; shards carry one for their index too), and each array of the far summary one of
its bytes (``attrs["crc32"]``): a chunk damaged at rest fails its check when a stage reads it,
and the run makes it again (:meth:`RunStore.reset_lost_chunks` with ``verify``).

Three fingerprints guard what is stored (:data:`geogla.runconfig.FINGERPRINT_LEVELS`): a store
whose *encode* fingerprint differs is refused; when only the *attend* or *classify* one differs
(other attention settings, other classes), the encoded windows are kept and the later stages
start afresh, so trying another class list costs no encoder time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from geogla.errors import (
    CorruptChunkError,
    DamagedStoreError,
    MissingStoreError,
    OutputError,
    StoreError,
    exception_chain,
)
from geogla.gla.config import ATTENTION_VERSION
from geogla.grid import WindowGrid
from geogla.paths import is_url
from geogla.runconfig import FINGERPRINT_LEVELS, RunConfig
from geogla.scene import Scene

log = logging.getLogger(__name__)

#: 4: windows are encoded as canvases padded to the preset's ``pad_to`` with CLIP's mean colour,
#: and the token grid is ``token_grid`` (rows, cols).  5: keys, values and features in float16,
#: uncompressed, and the values on CLIP's own grid (``value_grid``).  6: keys in 16-bit integers
#: with a float32 scale per token (``key_scale``).  7: every chunk of the window arrays, the
#: rasters and the text embeddings ends in its CRC-32C, and the far summary's arrays have theirs
#: in the group's attributes.
FORMAT = 7
#: dtype of the keys in the store: integers times a scale per token (:func:`quantize_keys`).
KEY_DTYPE = np.int16
#: dtype of the values and features in the store.
VECTOR_DTYPE = np.float16

#: Dimension names and short attributes of the run store's arrays, so that xarray opens it
#: (``xarray.open_zarr(url)``: the root's arrays; ``group="windows"``: the per-window flags): the
#: run's intermediate data, not a product.  Dimensions of one name have one size in a store.
ARRAY_DIMS: dict[str, tuple[str, ...]] = {
    "windows/box": ("window", "box_edge"),
    "windows/valid": ("window",),
    "windows/encoded": ("window",),
    "windows/attended": ("window",),
    "keys": ("window", "token", "key_channel"),
    "key_scale": ("window", "token"),
    "values": ("window", "value_token", "value_channel"),
    "features": ("window", "token", "embed_channel"),
    "text": ("prompt", "embed_channel"),
    "classes": ("y", "x"),
    "probabilities": ("class", "y", "x"),
    "blocks/stitched": ("block",),
}
ARRAY_ATTRS: dict[str, dict[str, Any]] = {
    "windows/box": {"long_name": "window (y1, x1, y2, x2) on the working grid", "units": "pixel"},
    "windows/valid": {"long_name": "window holds data (False: all nodata, not encoded)"},
    "windows/encoded": {"long_name": "encode stage done"},
    "windows/attended": {"long_name": "attend stage done"},
    "keys": {"long_name": "VFM keys, L2-normalised, in units of key_scale", "units": "1"},
    "key_scale": {"long_name": "per token: its largest key magnitude / 32767", "units": "1"},
    "values": {"long_name": "CLIP last-block value tokens on CLIP's own grid"},
    "features": {"long_name": "projected, L2-normalised features after attention", "units": "1"},
    "text": {"long_name": "prompt embeddings", "units": "1"},
    "classes": {"long_name": "class id on the scene's grid (255: nodata)", "units": "1"},
    # CF packing: xarray decodes the stored x 255 to 0..1
    "probabilities": {"long_name": "class probability", "units": "1", "scale_factor": 1 / 255},
    "blocks/stitched": {"long_name": "stitch stage done, per output block"},
}


def _described(name: str) -> dict[str, Any]:
    """``create_array`` keywords naming array ``name``'s dimensions and what it holds."""
    return {"dimension_names": ARRAY_DIMS[name], "attributes": ARRAY_ATTRS[name]}

#: The codec that ends every chunk of the large arrays with its CRC-32C (4 bytes a chunk).
CHECKSUM = Crc32cCodec()


class StoreDims(TypedDict):
    """What a run store needs to know of a model (:meth:`RunStore.create_or_resume`)."""

    pad_to: int  #: canvases are multiples of this many pixels
    token_size: int  #: pixels per key token
    value_token_size: int  #: pixels per value token (CLIP's patch)
    key_dim: int
    value_dim: int
    embed_dim: int
STAGES = ("text", "summary")


def window_bytes(token_grid: tuple[int, int], value_grid: tuple[int, int], key_dim: int, value_dim: int,
                 embed_dim: int) -> tuple[int, int, int]:
    """Bytes one window takes in a run store: its keys (with their scales), its values (on CLIP's
    grid), its features."""
    tokens, value_tokens = token_grid[0] * token_grid[1], value_grid[0] * value_grid[1]
    size = np.dtype(VECTOR_DTYPE).itemsize
    keys = tokens * (np.dtype(KEY_DTYPE).itemsize * key_dim + 4)  # and one float32 scale per token
    return keys, size * value_tokens * value_dim, size * tokens * embed_dim


def quantize_keys(keys: np.ndarray, dtype: np.dtype[Any] | type[np.generic]) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``(..., D)`` (float) as a run store of key dtype ``dtype`` keeps them: ``(stored, scale)``
    with ``keys ~= stored * scale[..., None]`` (:func:`dequantize_keys`).

    For an integer dtype, each token's vector is rounded to integers in units of its largest
    magnitude over the dtype's largest integer (scale float32): for unit keys of a few hundred
    dimensions, an absolute error 4 to 10 times smaller than float16's on the typical component,
    which is what the attention's similarities and thresholds see (docs/benchmarks.md: float16 keys
    changed 0.17% of the labels on a real raster, these 0.004%).  For a float dtype, a cast and
    scale 1.  Non-finite keys raise ValueError.
    """
    keys = np.asarray(keys, dtype=np.float32)
    if not np.isfinite(keys).all():
        raise ValueError("keys hold infinities or NaNs")
    dtype = np.dtype(dtype)
    if dtype.kind != "i":
        return keys.astype(dtype), np.ones(keys.shape[:-1], dtype=np.float32)
    top = np.iinfo(dtype).max
    scale = (np.abs(keys).max(axis=-1) / top).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))  # an all-zero token stays zero
    stored = np.clip(np.rint(keys / safe[..., None]), -top, top).astype(dtype)
    return stored, safe


def dequantize_keys(stored: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 keys of :func:`quantize_keys`'s ``(stored, scale)``."""
    out: np.ndarray = stored.astype(np.float32) * scale[..., None]
    return out
def _layout(scene: Scene, config: RunConfig, dims: StoreDims) -> tuple[WindowGrid, dict[str, Any]]:
    """The window grid of a run and the sizes its store records (token and value grids, widths)."""
    grid = WindowGrid(*scene.work_shape, config.crop, config.stride, pad_to=dims["pad_to"])
    canvas = grid.canvas
    return grid, {
        "token_size": dims["token_size"],
        "token_grid": list(grid.token_grid(dims["token_size"])),
        "value_grid": [canvas.height // dims["value_token_size"], canvas.width // dims["value_token_size"]],
        "key_dim": dims["key_dim"],
        "value_dim": dims["value_dim"],
        "embed_dim": dims["embed_dim"],
    }


def planned_bytes(scene: Scene, config: RunConfig, dims: StoreDims) -> dict[str, int]:
    """Bytes a finished run store of ``scene`` under ``config`` takes, by part, computed before it
    exists: the window vectors exactly (uncompressed, every window assumed to hold data: an
    all-nodata window's chunks are never written), the far summary of scalable attention as
    :func:`geogla.gla.prototypes.summary_bytes` estimates it, the class raster exactly
    (uncompressed too) and the probabilities and small arrays uncompressed (they compress: an
    upper bound)."""
    from geogla.gla import choose_algorithm  # the gla package imports torch
    from geogla.gla.prototypes import summary_bytes

    grid, layout = _layout(scene, config, dims)
    n_windows = len(grid)
    keys, values, features = window_bytes(tuple(layout["token_grid"]), tuple(layout["value_grid"]),
                                          dims["key_dim"], dims["value_dim"], dims["embed_dim"])
    tokens = n_windows * math.prod(layout["token_grid"])
    summary = 0
    if choose_algorithm(config.attention, tokens) == "scalable":
        summary = summary_bytes(tokens, dims["key_dim"], dims["value_dim"], config.attention)
    height, width = scene.georef.shape
    chunk_h, chunk_w = _raster_chunks(height, width, config.block)
    chunks = -(-height // chunk_h) * -(-width // chunk_w)  # written whole, edge chunks too
    raster_layers = 1 + (len(config.classes) if config.save_probabilities else 0)  # probabilities: at most
    return {
        "keys": n_windows * keys,
        "values": n_windows * values,
        "features": n_windows * features,
        "summary": summary,
        "rasters": raster_layers * chunks * chunk_h * chunk_w,
        # window boxes and flags, prompt embeddings
        "other": n_windows * (16 + 3) + 4 * len(config.classes.prompts) * dims["embed_dim"],
    }


#: Arrays (and done markers) each fingerprint level owns; they are reset when its fingerprint changes.
#: Arrays whose every chunk is written, even where it holds only the fill value.
_RASTERS = ("classes", "probabilities")

_LEVEL_ARRAYS = {"attend": ("features", "windows/attended", "summary", "done/summary"),
                 "classify": ("text", "classes", "probabilities", "blocks/stitched", "done/text")}


def fingerprints(scene: Scene, config: RunConfig) -> dict[str, str]:
    """One hash per level of stored results: of the scene and of the settings that level depends on."""
    out = {}
    for level in FINGERPRINT_LEVELS:
        payload: dict[str, Any] = {"scene": scene.to_json(), "config": config.level_json(level)}
        if level != "encode":
            payload["attention_version"] = ATTENTION_VERSION
        blob = json.dumps(payload, sort_keys=True)
        out[level] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return out


def _is_local(url: str) -> bool:
    return not is_url(url) or url.startswith("file://")


@dataclass
class RunStore:
    """An open run store.  Create with :meth:`create_or_resume`, reopen with :meth:`open`."""

    url: str
    group: zarr.Group

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, mode: Literal["r", "r+"] = "r+") -> RunStore:
        """Open an existing store (never in a mode that could wipe it)."""
        try:
            group = zarr.open_group(url, mode=mode)
        except FileNotFoundError:
            raise MissingStoreError(f"No run store at {url}.") from None
        except (ValueError, TypeError, KeyError):  # zarr.json unreadable: truncated, edited
            raise damaged(url, "its metadata cannot be read") from None
        if "geogla" not in group.attrs:
            raise StoreError(f"{url} is not a geogla run store.")
        return cls(url, group)

    @classmethod
    def create_or_resume(cls, url: str, scene: Scene, config: RunConfig, *, pad_to: int, token_size: int,
                         value_token_size: int, key_dim: int, value_dim: int, embed_dim: int,
                         overwrite: bool = False) -> tuple[RunStore, bool]:
        """Open the store at ``url`` to resume it, or create it; return ``(store, resumed)``.

        ``pad_to``, ``token_size`` and ``value_token_size`` (pixels per key and value token) fix the
        windows' canvas and token grids, and the dimensions size the arrays
        (:meth:`geogla.models.SegmentationModel.store_dims` gives all six).
        A store made for another scene or encoder configuration, or by a geogla whose store format
        differs, is refused with :class:`StoreError` unless ``overwrite``, which deletes it first.
        A store whose attention or class settings differ keeps its encoded windows and resets the
        later stages.
        """
        fps = fingerprints(scene, config)
        grid, dims = _layout(scene, config, StoreDims(pad_to=pad_to, token_size=token_size,
                                                      value_token_size=value_token_size, key_dim=key_dim,
                                                      value_dim=value_dim, embed_dim=embed_dim))
        if _store_exists(url) and _interrupted_creation(url):
            _remove_store(url)  # killed while being created: nothing in it is worth keeping
        if _store_exists(url):
            if not overwrite:
                try:
                    existing = cls.open(url)
                except DamagedStoreError:
                    raise
                except StoreError:
                    raise StoreError(
                        f"{url} exists and is not a geogla run store; remove it or pass --overwrite."
                    ) from None
                old = existing.meta
                if old.get("format") != FORMAT:
                    raise StoreError(
                        f"The run store {url} was written by another version of geogla (store format "
                        f"{old.get('format')}, this one writes {FORMAT}); pass --overwrite to start "
                        "afresh or choose another output folder."
                    )
                existing.check_metadata()
                if old.get("fingerprints", {}).get("encode") != fps["encode"] or old.get("grid", {}).get(
                        "pad_to") != pad_to:
                    raise StoreError(f"The run store {url} was made for another scene or configuration; "
                                     "pass --overwrite to start afresh or choose another output folder.")
                existing._reset_changed_levels(scene, config, fps, dims)
                for note in existing.reset_lost_chunks():
                    log.warning("run store %s: %s.", url, note)
                return existing, True
            _remove_store(url)
        try:
            group = zarr.open_group(url, mode="w-")
        except (OSError, PermissionError) as exc:
            raise OutputError(f"The run store {url} cannot be created: {exc.strerror or exc}.") from None
        L, B = len(grid), config.batch_size
        # The boxes follow from the grid arithmetically; the array is for other tools, in large chunks.
        group.create_array(
            "windows/box", data=grid.boxes().astype(np.int32), chunks=(min(max(L, 1), 65536), 4),
            **_described("windows/box"),
        )
        for flags in ("windows/valid", "windows/encoded"):
            group.create_array(flags, shape=(L,), chunks=(B,), dtype=bool, fill_value=False,
                               **_described(flags))
        _create_key_arrays(group, L, math.prod(dims["token_grid"]), key_dim, B)
        _create_window_vectors(group, "values", L, math.prod(dims["value_grid"]), value_dim, B)
        store = cls(url, group)
        store._create_level_arrays("attend", scene, config, dims)
        store._create_level_arrays("classify", scene, config, dims)
        store._write_meta(scene, config, fps, grid, dims)  # last: a store without it is not a valid store
        return store, False

    def _write_meta(self, scene: Scene, config: RunConfig, fps: dict[str, str], grid: WindowGrid,
                    dims: dict[str, Any], compacted: bool = False) -> None:
        self.group.attrs["geogla"] = {
            "format": FORMAT, "fingerprints": fps, "scene": scene.to_json(), "config": config.to_json(),
            "grid": {"height": grid.height, "width": grid.width, "crop": grid.crop, "stride": grid.stride,
                     "pad_to": grid.pad_to},
            "compacted": compacted, **dims}

    def _create_level_arrays(self, level: str, scene: Scene, config: RunConfig, dims: dict[str, Any]) -> None:
        g = self.group
        L = len(WindowGrid(*scene.work_shape, config.crop, config.stride))
        N, B, E = math.prod(dims["token_grid"]), config.batch_size, dims["embed_dim"]
        if level == "attend":
            _create_window_vectors(g, "features", L, N, E, B)
            g.create_array("windows/attended", shape=(L,), chunks=(B,), dtype=bool, fill_value=False,
                           overwrite=True, **_described("windows/attended"))
            return
        H, W = scene.georef.shape
        blk, P, C = config.block, len(config.classes.prompts), len(config.classes)
        g.create_array("text", shape=(P, E), chunks=(max(P, 1), E), dtype="float32", fill_value=0.0,
                       compressors=[CHECKSUM], overwrite=True, **_described("text"))
        # uncompressed, so that the store's size is known beforehand: one byte per pixel, next to
        # the window vectors' 13 (tiny model) to 180 (default)
        g.create_array(
            "classes",
            shape=(H, W),
            chunks=_raster_chunks(H, W, blk),
            dtype="uint8",
            fill_value=255,
            compressors=[CHECKSUM],
            overwrite=True,
            **_described("classes"),
        )
        if config.save_probabilities:
            g.create_array(
                "probabilities",
                shape=(C, H, W),
                chunks=(C, *_raster_chunks(H, W, blk)),
                dtype="uint8",
                fill_value=0,
                compressors=[ZstdCodec(), CHECKSUM],
                overwrite=True,
                **_described("probabilities"),
            )
        g.create_array("blocks/stitched", shape=(len(_blocks(H, W, blk)),), chunks=(1,), dtype=bool,
                       fill_value=False, overwrite=True, **_described("blocks/stitched"))

    def _reset_changed_levels(self, scene: Scene, config: RunConfig, fps: dict[str, str],
                              dims: dict[str, Any]) -> None:
        old = self.meta["fingerprints"]
        changed = [lvl for lvl in ("attend", "classify") if old.get(lvl) != fps[lvl]]
        if "attend" in changed and "classify" not in changed:
            changed.append("classify")  # class results are made from the attended features
        compacted = self.compacted
        if not changed:
            # execution-only settings may differ
            self._write_meta(scene, config, fps, self.grid, dims, compacted=compacted)
            return
        # Invalidate first: a run killed during the reset must not trust half-reset arrays.
        meta = self.meta
        meta["fingerprints"] = {**old, **{lvl: "" for lvl in changed}}
        self.group.attrs["geogla"] = meta
        if compacted and "attend" in changed:
            # other attention needs the keys and values that compacting dropped: encode again
            L, B, g = len(self.grid), config.batch_size, self.group
            _create_key_arrays(g, L, math.prod(dims["token_grid"]), dims["key_dim"], B)
            _create_window_vectors(g, "values", L, math.prod(dims["value_grid"]), dims["value_dim"], B)
            self.group.create_array("windows/encoded", shape=(L,), chunks=(B,), dtype=bool, fill_value=False,
                                    overwrite=True, **_described("windows/encoded"))
            compacted = False
        for level in changed:
            for name in _LEVEL_ARRAYS[level]:
                if name in self.group:
                    del self.group[name]
            self._create_level_arrays(level, scene, config, dims)
        self._write_meta(scene, config, fps, self.grid, dims, compacted=compacted)

    # -- metadata ------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.group.attrs["geogla"])  # type: ignore[arg-type]

    @property
    def scene(self) -> Scene:
        return Scene.from_json(self.meta["scene"])

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_json(self.meta["config"])

    @property
    def grid(self) -> WindowGrid:
        g = self.meta["grid"]
        return WindowGrid(
            int(g["height"]), int(g["width"]), int(g["crop"]), int(g["stride"]), int(g["pad_to"])
        )

    @property
    def token_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of every window's key tokens."""
        rows, cols = self.meta["token_grid"]
        return int(rows), int(cols)

    @property
    def tokens_per_window(self) -> int:
        """``N``: tokens per window."""
        rows, cols = self.token_grid
        return rows * cols

    @property
    def value_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of every window's stored value tokens (CLIP's own grid)."""
        rows, cols = self.meta["value_grid"]
        return int(rows), int(cols)

    @property
    def token_size(self) -> int:
        """Pixels per key token (the key encoder's patch)."""
        return int(self.meta["token_size"])

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """Output blocks ``(y1, x1, y2, x2)`` of the class raster, one per ``classes`` chunk."""
        g = self.scene.georef
        return _blocks(g.height, g.width, self.config.block)

    def block_grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of output blocks: the chunk grid of the class raster."""
        g, size = self.scene.georef, self.config.block
        return -(-g.height // size), -(-g.width // size)

    def block_count(self) -> int:
        """Number of output blocks (:meth:`blocks`)."""
        rows, cols = self.block_grid()
        return rows * cols

    def block(self, index: int) -> tuple[int, int, int, int]:
        """Output block ``index`` of :meth:`blocks`, computed alone."""
        g, size = self.scene.georef, self.config.block
        if not 0 <= index < self.block_count():
            raise IndexError(index)
        y, x = divmod(index, self.block_grid()[1])
        return y * size, x * size, min((y + 1) * size, g.height), min((x + 1) * size, g.width)

    def array(self, name: str) -> zarr.Array[Any]:
        """Array ``name``; :class:`DamagedStoreError` where its metadata is lost or unreadable."""
        try:
            arr = self.group[name]
        except KeyError:
            raise damaged(self.url, f"its array {name} is missing") from None
        except (ValueError, TypeError):
            raise damaged(self.url, f"the metadata of its array {name} cannot be read") from None
        if not isinstance(arr, zarr.Array):
            raise damaged(self.url, f"{name} is not an array")
        if name in _RASTERS:
            # every block's chunk is written, nodata ones too: a missing chunk is then a lost one
            return arr.with_config({"write_empty_chunks": True})
        return arr

    def check_metadata(self) -> None:
        """Raise :class:`DamagedStoreError` unless the store's attributes agree with themselves (the
        encode fingerprint with the stored scene and configuration, the window grid with both) and
        the metadata of every array the attributes vouch for reads, with one row per window where
        the array has them.  Arrays of a level being reset (empty fingerprint) or dropped by
        :meth:`compact` are not vouched for."""
        try:
            meta, scene, config, grid = self.meta, self.scene, self.config, self.grid
            stored: dict[str, str] = dict(meta["fingerprints"])
            _ = (self.token_grid, self.value_grid, self.token_size, self.embed_dim)
        except (KeyError, TypeError, ValueError):
            raise damaged(self.url, "its attributes are incomplete") from None
        if fingerprints(scene, config)["encode"] != stored.get("encode"):
            raise damaged(self.url, "its attributes do not match their own fingerprint")
        height, width = scene.work_shape
        if (grid.height, grid.width, grid.crop, grid.stride) != (height, width, config.crop, config.stride):
            raise damaged(self.url, "its window grid does not follow its scene and configuration")
        per_window = ["windows/box", "windows/valid", "windows/encoded"]
        if not self.compacted:
            per_window += ["keys", "key_scale", "values"]
        others: list[str] = []
        if stored.get("attend"):
            per_window += ["features", "windows/attended"]
        if stored.get("classify"):
            others += ["text", "classes"]
        for name in per_window + others:
            arr = self.array(name)
            if name in per_window and arr.shape[0] != len(grid):
                raise damaged(self.url, f"its array {name} has {arr.shape[0]} windows, its grid {len(grid)}")

    def read(self, name: str, selection: Any = slice(None)) -> np.ndarray:
        """``array(name)[selection]`` as a numpy array."""
        return np.asarray(self.array(name)[selection])

    def read_rows(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The given rows (first-axis indices, in any order) of array ``name``."""
        return np.asarray(self.array(name).oindex[np.asarray(rows, dtype=np.int64)])

    def write_tensors(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Store small arrays as the group ``name`` (replacing it), one Zarr array each, and the
        CRC-32 of each one's bytes in the group's ``attrs["crc32"]`` (checked by :meth:`read_tensors`)."""
        if name in self.group:
            del self.group[name]
        group = self.group.create_group(name)
        sums = {}
        for key, data in arrays.items():
            data = np.ascontiguousarray(data)
            # uncompressed: floats barely compress, and the store's size is then known beforehand
            group.create_array(key, data=data, chunks=data.shape if data.ndim else "auto", compressors=None,
                               dimension_names=tuple(f"{key}_{axis}" for axis in range(data.ndim)))
            sums[key] = zlib.crc32(data.tobytes())
        group.attrs["crc32"] = sums  # last: a group without it was not finished

    def read_tensors(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of group ``name`` written by :meth:`write_tensors`; :class:`CorruptChunkError`
        when one is missing or its bytes fail their CRC-32 (a lost or damaged chunk reads as fill
        values, which only the checksum tells)."""
        try:
            group = self.group[name]
            raw = group.attrs["crc32"]
            if not isinstance(raw, dict):
                raise TypeError("attrs['crc32'] is not a mapping")
            sums = {str(key): value for key, value in raw.items()}
            tensors = {key: np.asarray(self.array(f"{name}/{key}")[...]) for key in sums}
        except (KeyError, ValueError, TypeError, DamagedStoreError) as exc:
            raise CorruptChunkError(f"{name} of the run store {self.url} cannot be read") from exc
        for key, data in tensors.items():
            if zlib.crc32(np.ascontiguousarray(data).tobytes()) != sums[key]:
                raise CorruptChunkError(f"{name}/{key} of the run store {self.url} fails its checksum")
        return tensors

    # -- lost and damaged chunks --------------------------------------------------------------
    def reset_lost_chunks(self, verify: bool = False) -> list[str]:
        """Clear the done flags that vouch for chunks no longer in the store (a lost shard of keys,
        values or features, a lost block of the class raster, lost text embeddings), so that the
        stages that made them run again; return one line per kind of loss.

        With ``verify``, every chunk a flag vouches for is also read, and one that fails its
        checksum (or cannot be read at all) counts as lost; the far summary too.  This reads the
        whole store: a run does it only once a stage has found a damaged chunk
        (:func:`is_damaged_chunk`).  An encode batch is vouched for where one of its windows is
        valid and encoded, an attend batch where one is valid and attended, a block where it is
        stitched.  Lost features of a compacted store cannot be made again (its keys are gone):
        :class:`DamagedStoreError`.
        """
        notes: list[str] = []
        B, L = self.config.batch_size, len(self.grid)
        valid = self.read("windows/valid")
        batch_of = np.arange(L) // B
        lost_what = "lost or damaged" if verify else "lost"

        def lost_batches(flag: str, names: Sequence[str]) -> list[int]:
            done = np.zeros(-(-L // B), dtype=bool)
            np.logical_or.at(done, batch_of, self.read(flag) & valid)
            stored = set.intersection(*(self._stored_batches(n) for n in names))
            return [int(b) for b in np.nonzero(done)[0]
                    if b not in stored or (verify and not self._readable(names, np.s_[b * B:(b + 1) * B]))]

        fps = self.meta["fingerprints"]
        if not self.compacted:
            lost = lost_batches("windows/encoded", ("keys", "key_scale", "values"))
            for b in lost:
                self.array("windows/encoded")[b * B:(b + 1) * B] = False
            if lost:
                notes.append(f"{_batches(len(lost), 'encoded')} {lost_what} keys or values: encoding again")
            if self.is_done("summary") and ("summary" not in self.group
                                            or (verify and not self._readable_tensors("summary"))):
                del self.group["done/summary"]
                notes.append(f"the far summary was {lost_what}: summarising the keys again")
        if fps.get("attend"):
            lost = lost_batches("windows/attended", ("features",))
            if lost and self.compacted:
                raise damaged(self.url, f"features of {_batches(len(lost), 'attended')} are {lost_what} "
                              "and, compacted, it has no keys to make them again")
            for b in lost:
                self.array("windows/attended")[b * B:(b + 1) * B] = False
            if lost:
                notes.append(f"{_batches(len(lost), 'attended')} {lost_what} features: attending again")
        if fps.get("classify"):
            notes += self._reset_lost_blocks(verify, lost_what)
        return notes

    def _reset_lost_blocks(self, verify: bool, lost_what: str) -> list[str]:
        notes = []
        if (self.is_done("text") and self.config.classes.prompts
                and (not self._stored_chunks("text") or (verify and not self._readable(["text"], ...)))):
            del self.group["done/text"]
            notes.append(f"the text embeddings were {lost_what}: embedding the prompts again")
        per_row = self.block_grid()[1]
        stitched = self.read("blocks/stitched")
        rasters = [n for n in _RASTERS if n in self.group]
        stored = set.intersection(*(
            {c[-2] * per_row + c[-1] for c in self._stored_chunks(n)} for n in rasters
        ))
        lost = []
        for i in map(int, np.nonzero(stitched)[0]):
            y1, x1, y2, x2 = self.block(i)
            if i not in stored or (verify and not self._readable(rasters, np.s_[..., y1:y2, x1:x2])):
                lost.append(i)
        for i in lost:
            self.array("blocks/stitched")[i] = False
        if lost:
            plural = "s" if len(lost) != 1 else ""
            notes.append(f"{len(lost)} block{plural} of the class raster {lost_what}: stitching again")
        return notes

    def _readable(self, names: Sequence[str], selection: Any) -> bool:
        """Whether ``selection`` of each array in ``names`` reads (its checksums hold)."""
        try:
            for name in names:
                self.array(name)[selection]
        except Exception as exc:  # any failure to read a vouched-for chunk means damage
            log.debug("run store %s: %s fails to read: %s", self.url, names, exc)
            return False
        return True

    def _readable_tensors(self, name: str) -> bool:
        try:
            self.read_tensors(name)
        except CorruptChunkError:
            return False
        return True

    def _stored_batches(self, name: str) -> set[int]:
        """Encode batches (shards along the first axis) of window array ``name`` in the store."""
        return {c[0] for c in self._stored_chunks(name)}

    def _stored_chunks(self, name: str) -> set[tuple[int, ...]]:
        """Grid coordinates of the chunks (shards, where sharded) of array ``name`` in the store,
        from one listing of its chunk folder (local or remote)."""
        fs, base = _listed(self.url, f"{name}/c")
        try:
            paths = fs.find(base)
        except FileNotFoundError:
            return set()
        found = set()
        for path in paths:
            parts = str(path)[len(base):].strip("/").split("/")
            if all(p.isdigit() for p in parts):
                found.add(tuple(int(p) for p in parts))
        return found

    # -- compacting ----------------------------------------------------------------------------
    @property
    def compacted(self) -> bool:
        """Whether :meth:`compact` dropped the keys, values and summary."""
        return bool(self.meta.get("compacted", False))

    def compact(self) -> None:
        """Drop what only a rerun with other attention settings reads: the keys, the values and the
        far summary (most of the store).  The attended features, the text embeddings and the
        class raster stay, so a rerun with other classes still costs no encoder or attention
        time; a rerun with other attention settings encodes the windows again."""
        meta = self.meta
        meta["compacted"] = True
        self.group.attrs["geogla"] = meta  # first: a store killed while compacting is known to lack them
        for name in ("keys", "key_scale", "values", "summary"):
            if name in self.group:
                del self.group[name]

    # -- stage markers -------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.meta["embed_dim"])

    def is_done(self, stage: str) -> bool:
        return f"done/{stage}" in self.group

    def mark_done(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(stage)
        self.group.require_group(f"done/{stage}")


def _create_window_vectors(group: zarr.Group, name: str, n_windows: int, tokens: int, dim: int, batch: int,
                           dtype: type[np.generic] | None = None) -> None:
    """An ``(L, tokens, dim)`` array of vectors per window (``dtype``, default :data:`VECTOR_DTYPE`):
    one window per chunk (single windows read cheaply), one encode batch per shard (each task writes
    its own), uncompressed."""
    group.create_array(
        name,
        shape=(n_windows, tokens, dim),
        chunks=(1, tokens, dim),
        shards=(batch, tokens, dim),
        dtype=VECTOR_DTYPE if dtype is None else dtype,
        fill_value=0,
        compressors=[CHECKSUM],
        overwrite=True,
        **_described(name),
    )


def _create_key_arrays(group: zarr.Group, n_windows: int, tokens: int, dim: int, batch: int) -> None:
    """``keys`` in :data:`KEY_DTYPE` and their ``key_scale`` per token, chunked as the window vectors."""
    _create_window_vectors(group, "keys", n_windows, tokens, dim, batch, KEY_DTYPE)
    group.create_array("key_scale", shape=(n_windows, tokens), chunks=(1, tokens), shards=(batch, tokens),
                       dtype="float32", fill_value=0.0, compressors=[CHECKSUM], overwrite=True,
                       **_described("key_scale"))


def _raster_chunks(height: int, width: int, block: int) -> tuple[int, int]:
    """Chunks of the rasters: one output block each (no larger than the raster)."""
    return min(block, height), min(block, width)


def _blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    return [(y, x, min(y + block, height), min(x + block, width))
            for y in range(0, height, block) for x in range(0, width, block)]


def _batches(count: int, kind: str) -> str:
    return f"{count} {kind} batch{'es' if count != 1 else ''}"


def is_damaged_chunk(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says a stage read a damaged chunk: zarr's
    CRC-32C check failed, or :meth:`RunStore.read_tensors` found a far-summary array damaged."""
    return any(
        isinstance(e, CorruptChunkError)
        or (isinstance(e, ValueError) and "checksum do not match" in str(e))  # zarr's Crc32cCodec
        for e in exception_chain(exc)
    )


def damaged(url: str, what: str) -> DamagedStoreError:
    """The error for a run store at ``url`` that cannot be trusted because of ``what``."""
    return DamagedStoreError(
        f"The run store {url} is damaged ({what}); pass --overwrite to start afresh or choose another "
        "output folder."
    )


def _interrupted_creation(url: str) -> bool:
    """True for a store whose creation was interrupted: a group with no geogla metadata holding
    nothing but arrays geogla creates (the run lock, geogla.lock, is no Zarr node and not listed)."""
    try:
        group = zarr.open_group(url, mode="r")
    except (FileNotFoundError, ValueError, OSError):
        return False
    if "geogla" in group.attrs:
        return False
    ours = {
        "windows",
        "keys",
        "values",
        "features",
        "summary",
        "text",
        "classes",
        "probabilities",
        "blocks",
        "done",
    }
    with warnings.catch_warnings():
        # Listing warns about objects that are not Zarr nodes, such as the lock object.
        warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
        return set(group.keys()) <= ours


def _store_exists(url: str) -> bool:
    if _is_local(url):
        path = url.removeprefix("file://")
        return os.path.exists(path)
    fs, path = _listed(url)
    return bool(fs.exists(path))


def _listed(url: str, sub: str = "") -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path of ``sub`` inside it, with the filesystem's
    cached listings of that path dropped (object stores cache listings; the store may have changed
    since)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{sub}" if sub else root
    fs.invalidate_cache(path)
    return fs, path


def _remove_store(url: str) -> None:
    if _is_local(url):
        path = url.removeprefix("file://")
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=True)
    fs.invalidate_cache(path)

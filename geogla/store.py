"""The run store: one Zarr v3 group per run holding every stage's inputs and outputs.

Layout (``L`` windows, ``N = rows * cols`` tokens per window (``token_grid``), ``P`` prompts,
``C`` classes, ``H`` x ``W`` the scene's file grid)::

    <run>.zarr/                  attrs["geogla"]: format, scene, config, grid, fingerprints
      windows/box       (L, 4)      int32    window (y1, x1, y2, x2) in working pixels
      windows/valid     (L,)        bool     False: window is all nodata, not encoded
      windows/encoded   (L,)        bool     per-window done flags of the encode stage
      windows/attended  (L,)        bool     per-window done flags of the attend stage
      keys              (L, N, Dk)  float16  VFM keys, L2-normalised
      values            (L, Nv, Dv) float16  CLIP last-block value tokens on CLIP's own grid
                                             (``value_grid``, Nv tokens); resized to the key grid
                                             when read (:func:`geogla.models.clip.resize_token_grid`)
      summary/<field>               scalable attention's far summary of all keys (FarSample)
      features          (L, N, E)   float16  projected, L2-normalised features after attention
      text              (P, E)      float32  prompt embeddings
      classes           (H, W)      uint8    stitched class ids, 255 = nodata
      probabilities     (C, H, W)   uint8    class probability x 255 (only with save_probabilities)
      blocks/stitched   (B,)        bool     per-block done flags of the stitch stage
      done/<stage>                  empty groups marking finished stages (text, summary)

Window arrays are chunked (keys and values: sharded) by encode batch and the rasters by output
block, so that every task writes whole chunks (shards) that no other task touches.  Keys and
values hold one window per inner chunk, so attention reads single windows cheaply.  Done flags
are written after the data they mark.  Keys, values and features are 16-bit floats (float16: the
keys and features are unit vectors, where its 11 significant bits are 8x finer than bfloat16's,
and the values are far inside its range), stored uncompressed: floats this dense barely compress,
and the store's size is then known before the run (:func:`window_bytes`).

Three fingerprints guard what is stored (:data:`geogla.runconfig.FINGERPRINT_LEVELS`): a store
whose *encode* fingerprint differs is refused; when only the *attend* or *classify* one differs
(other attention settings, other classes), the encoded windows are kept and the later stages
start afresh, so trying another class list costs no encoder time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np
import zarr

from geogla.errors import OutputError, StoreError
from geogla.gla.config import ATTENTION_VERSION
from geogla.grid import WindowGrid
from geogla.paths import is_url
from geogla.runconfig import FINGERPRINT_LEVELS, RunConfig
from geogla.scene import Scene

#: 4: windows are encoded as canvases padded to the preset's ``pad_to`` with CLIP's mean colour,
#: and the token grid is ``token_grid`` (rows, cols).  5: keys, values and features in float16,
#: uncompressed, and the values on CLIP's own grid (``value_grid``).
FORMAT = 5
#: dtype of keys, values and features in the store.
VECTOR_DTYPE = np.float16


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
    """Bytes one window takes in a run store: its keys, its values (on CLIP's grid), its features."""
    tokens, value_tokens = token_grid[0] * token_grid[1], value_grid[0] * value_grid[1]
    size = np.dtype(VECTOR_DTYPE).itemsize
    return size * tokens * key_dim, size * value_tokens * value_dim, size * tokens * embed_dim
#: Arrays (and done markers) each fingerprint level owns; they are reset when its fingerprint changes.
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
            raise StoreError(f"No run store at {url}.") from None
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
        grid = WindowGrid(*scene.work_shape, config.crop, config.stride, pad_to=pad_to)
        canvas = grid.canvas
        dims: dict[str, Any] = {
            "token_size": token_size,
            "token_grid": list(grid.token_grid(token_size)),
            "value_grid": [canvas.height // value_token_size, canvas.width // value_token_size],
            "key_dim": key_dim,
            "value_dim": value_dim,
            "embed_dim": embed_dim,
        }
        if _store_exists(url) and _interrupted_creation(url):
            _remove_store(url)  # killed while being created: nothing in it is worth keeping
        if _store_exists(url):
            if not overwrite:
                try:
                    existing = cls.open(url)
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
                if old.get("fingerprints", {}).get("encode") != fps["encode"] or old.get("grid", {}).get(
                        "pad_to") != pad_to:
                    raise StoreError(f"The run store {url} was made for another scene or configuration; "
                                     "pass --overwrite to start afresh or choose another output folder.")
                existing._reset_changed_levels(scene, config, fps, dims)
                return existing, True
            _remove_store(url)
        try:
            group = zarr.open_group(url, mode="w-")
        except (OSError, PermissionError) as exc:
            raise OutputError(f"The run store {url} cannot be created: {exc.strerror or exc}.") from None
        L, B = len(grid), config.batch_size
        # The boxes follow from the grid arithmetically; the array is for other tools, in large chunks.
        group.create_array(
            "windows/box", data=grid.boxes().astype(np.int32), chunks=(min(max(L, 1), 65536), 4)
        )
        group.create_array("windows/valid", shape=(L,), chunks=(B,), dtype=bool, fill_value=False)
        group.create_array("windows/encoded", shape=(L,), chunks=(B,), dtype=bool, fill_value=False)
        _create_window_vectors(group, "keys", L, math.prod(dims["token_grid"]), key_dim, B)
        _create_window_vectors(group, "values", L, math.prod(dims["value_grid"]), value_dim, B)
        store = cls(url, group)
        store._create_level_arrays("attend", scene, config, dims)
        store._create_level_arrays("classify", scene, config, dims)
        store._write_meta(scene, config, fps, grid, dims)  # last: a store without it is not a valid store
        return store, False

    def _write_meta(self, scene: Scene, config: RunConfig, fps: dict[str, str], grid: WindowGrid,
                    dims: dict[str, Any]) -> None:
        self.group.attrs["geogla"] = {
            "format": FORMAT, "fingerprints": fps, "scene": scene.to_json(), "config": config.to_json(),
            "grid": {"height": grid.height, "width": grid.width, "crop": grid.crop, "stride": grid.stride,
                     "pad_to": grid.pad_to},
            **dims}

    def _create_level_arrays(self, level: str, scene: Scene, config: RunConfig, dims: dict[str, Any]) -> None:
        g = self.group
        L = len(WindowGrid(*scene.work_shape, config.crop, config.stride))
        N, B, E = math.prod(dims["token_grid"]), config.batch_size, dims["embed_dim"]
        if level == "attend":
            _create_window_vectors(g, "features", L, N, E, B)
            g.create_array("windows/attended", shape=(L,), chunks=(B,), dtype=bool, fill_value=False,
                           overwrite=True)
            return
        H, W = scene.georef.shape
        blk, P, C = config.block, len(config.classes.prompts), len(config.classes)
        g.create_array("text", shape=(P, E), chunks=(max(P, 1), E), dtype="float32", fill_value=0.0,
                       overwrite=True)
        g.create_array(
            "classes", shape=(H, W), chunks=(blk, blk), dtype="uint8", fill_value=255, overwrite=True
        )
        if config.save_probabilities:
            g.create_array(
                "probabilities",
                shape=(C, H, W),
                chunks=(C, blk, blk),
                dtype="uint8",
                fill_value=0,
                overwrite=True,
            )
        g.create_array("blocks/stitched", shape=(len(_blocks(H, W, blk)),), chunks=(1,), dtype=bool,
                       fill_value=False, overwrite=True)

    def _reset_changed_levels(self, scene: Scene, config: RunConfig, fps: dict[str, str],
                              dims: dict[str, Any]) -> None:
        old = self.meta["fingerprints"]
        changed = [lvl for lvl in ("attend", "classify") if old.get(lvl) != fps[lvl]]
        if "attend" in changed and "classify" not in changed:
            changed.append("classify")  # class results are made from the attended features
        if not changed:
            self._write_meta(scene, config, fps, self.grid, dims)  # execution-only settings may differ
            return
        # Invalidate first: a run killed during the reset must not trust half-reset arrays.
        meta = self.meta
        meta["fingerprints"] = {**old, **{lvl: "" for lvl in changed}}
        self.group.attrs["geogla"] = meta
        for level in changed:
            for name in _LEVEL_ARRAYS[level]:
                if name in self.group:
                    del self.group[name]
            self._create_level_arrays(level, scene, config, dims)
        self._write_meta(scene, config, fps, self.grid, dims)

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

    def array(self, name: str) -> zarr.Array[Any]:
        arr = self.group[name]
        assert isinstance(arr, zarr.Array)
        return arr

    def read(self, name: str, selection: Any = slice(None)) -> np.ndarray:
        """``array(name)[selection]`` as a numpy array."""
        return np.asarray(self.array(name)[selection])

    def read_rows(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The given rows (first-axis indices, in any order) of array ``name``."""
        return np.asarray(self.array(name).oindex[np.asarray(rows, dtype=np.int64)])

    def write_tensors(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Store small arrays as the group ``name`` (replacing it), one Zarr array each."""
        if name in self.group:
            del self.group[name]
        group = self.group.create_group(name)
        for key, data in arrays.items():
            group.create_array(
                key, data=np.ascontiguousarray(data), chunks=data.shape if data.ndim else "auto"
            )

    def read_tensors(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of group ``name`` written by :meth:`write_tensors`."""
        group = self.group[name]
        assert isinstance(group, zarr.Group)
        return {key: np.asarray(arr[...]) for key, arr in group.arrays()}

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


def _create_window_vectors(
    group: zarr.Group, name: str, n_windows: int, tokens: int, dim: int, batch: int
) -> None:
    """An ``(L, tokens, dim)`` array of 16-bit vectors per window: one window per chunk (single windows
    read cheaply), one encode batch per shard (each task writes its own), uncompressed."""
    group.create_array(
        name,
        shape=(n_windows, tokens, dim),
        chunks=(1, tokens, dim),
        shards=(batch, tokens, dim),
        dtype=VECTOR_DTYPE,
        fill_value=0.0,
        compressors=None,
        overwrite=True,
    )


def _blocks(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    return [(y, x, min(y + block, height), min(x + block, width))
            for y in range(0, height, block) for x in range(0, width, block)]


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
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache(path)  # object stores cache listings; the store may have changed since
    return bool(fs.exists(path))


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

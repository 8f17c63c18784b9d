"""The summary stage (scalable attention's far summary) and the attend stage (attention, then CLIP's
projection), and the run store seen as a :class:`geogla.gla.source.WindowSource`."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geogla.gla import GLAConfig, attend, choose_algorithm, compute_dtypes
from geogla.gla.config import Algorithm
from geogla.gla.exact import attend_exact
from geogla.gla.local import LocalAttention
from geogla.gla.prototypes import FarSample, summarize
from geogla.gla.scalable import ScalableAttention
from geogla.models import SegmentationModel
from geogla.models.clip import resize_token_grid
from geogla.stages.common import batch_count, batch_windows, model_for
from geogla.stages.encode import to_store_dtype
from geogla.stages.result import SKIPPED, StageResult
from geogla.store import RunStore, dequantize_keys

#: Windows per attend task (whole encode batches): enough to amortise reading the summary.
ATTEND_TASK_WINDOWS = 64
#: Windows an attend task keeps after reading them (MB): the near windows of its next batches.
ATTEND_CACHE_MB = 128


class StoreWindows:
    """The valid windows of a run store as a :class:`geogla.gla.source.WindowSource`.

    Window ``i`` of the source is store window ``rows[i]``; runs of consecutive store windows are
    read with one slice.  Keys and values come out float32, the values resized from CLIP's grid,
    where the store keeps them, to the key grid.  With ``cache_mb``, recently read windows are kept
    (least recently used first out): scalable attention reads each window for several neighbouring
    batches.  Passes
    over every window (the summary) read each once and need no cache.
    """

    def __init__(self, store: RunStore, rows: np.ndarray, cache_mb: int = 0) -> None:
        self.rows = rows
        self._arrays = {"keys": store.array("keys"), "values": store.array("values")}
        self._key_scale = store.array("key_scale")
        self._grids = {"keys": store.token_grid, "values": store.value_grid}
        self._token_grid = store.token_grid
        self._cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        per_entry = 4 * self.n_tokens * max(int(a.shape[2]) for a in self._arrays.values())
        self._capacity = cache_mb * 2**20 // per_entry  # window keys or values

    @property
    def n_windows(self) -> int:
        return len(self.rows)

    @property
    def n_tokens(self) -> int:
        return int(self._arrays["keys"].shape[1])

    def keys(self, windows: Sequence[int]) -> torch.Tensor:
        return self._read("keys", windows)

    def values(self, windows: Sequence[int]) -> torch.Tensor:
        return self._read("values", windows)

    def _read(self, name: str, windows: Sequence[int]) -> torch.Tensor:
        array = self._arrays[name]
        found: dict[int, torch.Tensor] = {}
        for w in windows:
            hit = self._cache.get((name, int(w)))
            if hit is not None:
                found[int(w)] = hit
                self._cache.move_to_end((name, int(w)))
        missing = sorted({int(w) for w in windows} - found.keys())
        start = 0
        while start < len(missing):  # one read per run of consecutive store rows
            stop = start + 1
            while stop < len(missing) and self.rows[missing[stop]] == self.rows[missing[stop - 1]] + 1:
                stop += 1
            block = self._load(name, int(self.rows[missing[start]]), stop - start)
            for k, w in enumerate(missing[start:stop]):
                found[w] = block[k]
                if self._capacity:
                    # A copy: a view would keep the whole run it was read with alive, and on a wide
                    # scene those runs span a row of windows each (memory growing with the scene).
                    self._cache[(name, w)] = block[k].clone()
            start = stop
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        if not found:
            return torch.empty(0, self.n_tokens, int(array.shape[2]))  # float32, on the key grid
        return torch.stack([found[int(w)] for w in windows])

    def _load(self, name: str, first: int, count: int) -> torch.Tensor:
        """Store windows ``first .. first + count - 1`` of ``name``, float32, on the key grid."""
        stored = np.asarray(self._arrays[name][first:first + count])
        if name == "keys":
            stored = dequantize_keys(stored, np.asarray(self._key_scale[first:first + count]))
        return resize_token_grid(torch.from_numpy(stored).float(), self._grids[name], self._token_grid)


def store_algorithm(store: RunStore) -> Algorithm:
    """How the run's attention is computed (:func:`geogla.gla.choose_algorithm` over the grid's
    ``L * N`` tokens, nodata windows included, so that the task graph is known before encoding)."""
    return choose_algorithm(store.config.attention, len(store.grid) * store.tokens_per_window)


def _attention_dtypes(store: RunStore, model: SegmentationModel) -> tuple[torch.dtype, torch.dtype]:
    like = torch.empty(0, dtype=torch.float32, device=model.device)
    return compute_dtypes(store.config.attention.precision, like)


def summarize_keys(store_url: str) -> StageResult:
    """Scalable attention's far summary of all valid windows (two passes over the keys), stored
    under ``summary/`` with the windows numbered by their ids in the store; an empty ``summary/``
    for the other algorithms."""
    store = RunStore.open(store_url)
    if store.is_done("summary"):
        return SKIPPED
    t0 = time.perf_counter()
    tensors: dict[str, np.ndarray] = {}  # an empty summary where there is nothing to summarise
    if store_algorithm(store) == "scalable":
        ids = np.nonzero(store.read("windows/valid"))[0]  # once per run: the summary reads every window
        if len(ids):
            model = model_for(store)
            cdtype, adtype = _attention_dtypes(store, model)
            sample = summarize(StoreWindows(store, ids), store.config.attention, cdtype, adtype,
                               torch.device(model.device))
            sample = sample.renumbered(torch.arange(len(ids)), torch.from_numpy(ids))
            tensors = {k: v.numpy() for k, v in sample.to_tensors().items()}
    store.write_tensors("summary", tensors)  # always: a done summary without its group was lost
    store.mark_done("summary")
    return StageResult({"summary": time.perf_counter() - t0})


def attend_batches(store_url: str, batches: Sequence[int]) -> StageResult:
    """Attention, then CLIP's projection, for the given encode batches (:func:`batch_windows`):
    L2-normalised features per token, written batch by batch.

    Scalable attention reads only the windows near the batches' windows (and the stored summary),
    attention bounded to a context radius only those within the radius;
    attention inside each window reads the batches and, for query smoothing, the windows
    overlapping them; what they read of the run store does not grow with the scene.  Exact
    attention needs every window: its graph has one task over all batches.
    """
    store = RunStore.open(store_url)
    todo = [ids for ids in (batch_windows(store, b) for b in batches)
            if not bool(np.all(store.read("windows/attended", slice(ids.start, ids.stop))))]
    if not todo:
        return SKIPPED
    t0 = time.perf_counter()
    algorithm, cfg = store_algorithm(store), store.config.attention
    rows = _context_windows(store, algorithm, todo)
    model = model_for(store)
    device = torch.device(model.device)
    source = StoreWindows(store, rows, cache_mb=ATTEND_CACHE_MB)
    offsets = torch.from_numpy(store.grid.token_offsets(store.token_size, rows))
    n = store.tokens_per_window
    exact: torch.Tensor | None = None
    streamed: ScalableAttention | LocalAttention | None = None  # reads its windows from source
    if algorithm == "exact" and len(rows):
        every = list(range(len(rows)))
        exact = attend_exact(source.keys(every).to(device), source.values(every).to(device), cfg,
                             offsets=offsets.to(device), grid=store.token_grid)
    elif algorithm == "scalable" and len(rows):
        cdtype, adtype = _attention_dtypes(store, model)
        tensors = {k: torch.from_numpy(v) for k, v in store.read_tensors("summary").items()}
        sample = FarSample.from_tensors(tensors, cdtype, adtype, device)
        # numbered as this task's source: its windows and their neighbours only
        sample = sample.renumbered(torch.from_numpy(rows), torch.arange(len(rows)))
        streamed = ScalableAttention(sample, offsets, cfg, cdtype, adtype, store.token_grid)
    elif algorithm == "local" and len(rows):
        cdtype, adtype = _attention_dtypes(store, model)
        streamed = LocalAttention(offsets.to(device), n, cfg, cdtype, adtype, store.token_grid)
    t_att = t_proj = 0.0
    feature_dtype = store.array("features").dtype
    for ids in todo:
        sl = slice(ids.start, ids.stop)
        valid = store.read("windows/valid", sl)
        local = np.searchsorted(rows, np.asarray(ids)[valid])
        features = np.zeros((len(ids), n, store.embed_dim), dtype=feature_dtype)
        if len(local):
            t1 = time.perf_counter()
            if exact is not None:
                attended = exact[torch.from_numpy(local).to(exact.device)]
            elif streamed is not None:
                attended = streamed(source, local.tolist())
            else:
                attended = _attend_each_window(source, local, offsets, cfg, store, device)
            t2 = time.perf_counter()
            feats = F.normalize(
                model.project(attended.to(device=device, dtype=torch.float32)).float(), dim=-1
            )
            features[valid] = to_store_dtype(feats, feature_dtype, "features")
            t_att, t_proj = t_att + t2 - t1, t_proj + time.perf_counter() - t2
        store.array("features")[sl] = features
        store.array("windows/attended")[sl] = True  # last: marks the batch done
    return StageResult(
        {"attend": t_att, "project": t_proj, "attend_io": time.perf_counter() - t0 - t_att - t_proj}
    )


def _context_windows(store: RunStore, algorithm: Algorithm, batches: list[range]) -> np.ndarray:
    """Ids (ascending) of the valid windows an attend task reads: every window for exact
    attention; else the batches' windows and those that can enter their attention (near them for
    scalable attention, within the context radius for local attention, overlapping them for query
    smoothing), found from the grid's arithmetic
    and read in their own slices of ``windows/valid``."""
    if algorithm == "exact":
        return np.nonzero(store.read("windows/valid"))[0]
    grid, cfg = store.grid, store.config.attention
    own = np.concatenate([np.arange(r.start, r.stop) for r in batches])
    margin = -1  # pixels around a window whose windows join: none
    if algorithm in ("scalable", "local"):
        # near (context): within near_radius (context_radius) tokens; one token more, as offsets
        # are rounded down to tokens
        radius = cfg.near_radius if algorithm == "scalable" else cfg.context_radius
        assert radius is not None  # local attention has a context radius
        margin = (radius + 1) * store.token_size
    elif cfg.smoothing:
        margin = 0  # the windows that overlap it
    ids = own
    if margin >= 0:
        boxes = grid.boxes(own)
        found = [grid.windows_intersecting(y1 - margin, x1 - margin, y2 + margin, x2 + margin)
                 for y1, x1, y2, x2 in boxes.tolist()]
        ids = np.unique(np.concatenate([own, *found]))
    valid: np.ndarray = ids[store.read_rows("windows/valid", ids)]
    return valid


def attend_all(store_url: str) -> StageResult:
    """The summary and every attend batch, in this process (for callers without a task graph)."""
    summary = summarize_keys(store_url)
    parts = attend_batches(store_url, range(batch_count(RunStore.open(store_url, mode="r"))))
    return StageResult({**summary.seconds, **parts.seconds}, skipped=summary.skipped and parts.skipped)


def _attend_each_window(source: StoreWindows, local: np.ndarray, offsets: torch.Tensor, cfg: GLAConfig,
                        store: RunStore, device: torch.device) -> torch.Tensor:
    """Attention inside each of the ``local`` windows (no key-value extension).

    Query smoothing averages over the tokens at the same place in overlapping windows, so those
    are read too (as context) and only the batch's own rows are kept.
    """
    wanted = [int(i) for i in local]
    context = wanted
    if cfg.smoothing:
        grid, rows = store.grid, source.rows
        near = np.array(
            sorted({int(w) for i in wanted for w in grid.windows_intersecting(*grid.window(int(rows[i])))})
        )
        pos = np.minimum(np.searchsorted(rows, near), len(rows) - 1)
        context = sorted(set(pos[rows[pos] == near].tolist()) | set(wanted))  # the valid ones
    off = offsets[context]
    out = attend(source.keys(context).to(device), source.values(context).to(device), config=cfg,
                 offsets=(off - off.amin(dim=0)).to(device), grid=store.token_grid)
    position = {c: k for k, c in enumerate(context)}
    return out[torch.tensor([position[i] for i in wanted], device=out.device)]

"""What every stage shares: the model of a run (loaded once per process) and the encode batches."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

from geogla.models import SegmentationModel, create_model
from geogla.store import RunStore

_model_lock = threading.Lock()


def load_model(name: str, weights: str, clip_weights: str | None, vfm_weights: str | None, device: str,
               precision: str = "float32") -> SegmentationModel:
    """The model of a run, loaded once per process and reused by every task there."""
    with _model_lock:  # a worker's threads asking at once must not each load a copy (lru_cache would)
        return _cached_model(name, weights, clip_weights, vfm_weights, device, precision)


@functools.lru_cache(maxsize=2)
def _cached_model(name: str, weights: str, clip_weights: str | None, vfm_weights: str | None, device: str,
                  precision: str) -> SegmentationModel:
    return create_model(name, weights=weights, clip_weights=clip_weights, vfm_weights=vfm_weights,
                        device=device, precision=precision)


def model_for(store: RunStore) -> SegmentationModel:
    """The model of the run ``store`` belongs to (:func:`load_model`)."""
    c = store.config
    return load_model(c.model, c.weights, c.clip_weights, c.vfm_weights, c.device, c.precision)


def batch_count(store: RunStore) -> int:
    """Number of encode batches of the run (one per chunk of the window arrays)."""
    return -(-len(store.grid) // store.config.batch_size)


def batch_windows(store: RunStore, batch: int) -> range:
    """Window ids of encode batch ``batch``: consecutive, one chunk of the window arrays."""
    n_windows, size = len(store.grid), store.config.batch_size
    if not 0 <= batch < batch_count(store):
        raise IndexError(batch)
    return range(batch * size, min((batch + 1) * size, n_windows))


def window_batches(store: RunStore) -> list[list[int]]:
    """Window ids grouped by encode batch (:func:`batch_windows` of every batch)."""
    return [list(batch_windows(store, b)) for b in range(batch_count(store))]


def batch_slice(ids: Sequence[int]) -> slice:
    """The rows of the window arrays that one encode batch (consecutive ids) owns."""
    return slice(ids[0], ids[-1] + 1)

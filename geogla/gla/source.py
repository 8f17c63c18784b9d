"""Where scalable attention reads the keys and values of a scene's windows from.

Scalable attention (:mod:`geogla.gla.scalable`) never needs all windows at once: it makes a few
passes over them in batches and then reads, for each batch of query windows, only the windows
near them.  A :class:`WindowSource` serves windows by index; :class:`TensorWindows` serves them
from tensors in memory, and the run's attend stage serves them from the run store (no file or
store code lives in this package).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class WindowSource(Protocol):
    """Keys and values of ``n_windows`` windows of ``n_tokens`` tokens each, read by window index."""

    @property
    def n_windows(self) -> int: ...

    @property
    def n_tokens(self) -> int: ...

    def keys(self, windows: Sequence[int]) -> Tensor:
        """``(len(windows), N, Dk)`` unit keys of ``windows``, in that order."""
        ...

    def values(self, windows: Sequence[int]) -> Tensor:
        """``(len(windows), N, Dv)`` values of ``windows``, in that order."""
        ...


class TensorWindows:
    """A :class:`WindowSource` over ``(L, N, Dk)`` keys and ``(L, N, Dv)`` values in memory.

    A run of consecutive ascending windows is returned as a view (no copy).
    """

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        self._keys, self._values = keys, values

    @property
    def n_windows(self) -> int:
        return int(self._keys.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self._keys.shape[1])

    def keys(self, windows: Sequence[int]) -> Tensor:
        return _take(self._keys, windows)

    def values(self, windows: Sequence[int]) -> Tensor:
        return _take(self._values, windows)


def _take(data: Tensor, windows: Sequence[int]) -> Tensor:
    ids = list(windows)
    if ids and ids == list(range(ids[0], ids[0] + len(ids))):
        return data[ids[0] : ids[0] + len(ids)]
    return data[torch.tensor(ids, dtype=torch.int64, device=data.device)]

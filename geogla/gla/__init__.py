"""ProxyCLIP + GLA attention over the windows of a scene (docs/method.md, section 3).

Pure tensor functions, no files and no scheduling::

    from geogla.gla import GLAConfig, attend
    out = attend(keys, values, config=GLAConfig(), offsets=None)   # (L, N, Dv)

:func:`choose_algorithm` decides how attention is computed (each window alone, exactly over all
windows, or scalably); :mod:`geogla.gla.exact` and :mod:`geogla.gla.scalable` compute it on the
kernels of :mod:`geogla.gla._kernels`.  The configuration is importable without torch; the
functions that compute import it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geogla._lazy import lazy_attributes
from geogla.gla.config import Algorithm, GLAConfig, choose_algorithm

if TYPE_CHECKING:
    from geogla.gla.dispatch import attend
    from geogla.gla.precision import compute_dtypes
    from geogla.gla.smoothing import smooth_queries
    from geogla.precision import bfloat16_is_fast

_LAZY = {"attend": "geogla.gla.dispatch", "bfloat16_is_fast": "geogla.precision",
         "compute_dtypes": "geogla.gla.precision", "smooth_queries": "geogla.gla.smoothing"}

__all__ = ["Algorithm", "GLAConfig", "attend", "bfloat16_is_fast", "choose_algorithm", "compute_dtypes",
           "smooth_queries"]


__getattr__ = lazy_attributes(__name__, _LAZY)

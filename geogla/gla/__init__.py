"""ProxyCLIP + GLA attention over the windows of a scene (method.md section 3).

Pure tensor functions::

    from geogla.gla import GLAConfig, attend
    out = attend(keys, values, config=GLAConfig(), offsets=None)   # (L, N, Dv)
"""

from geogla.gla.attention import attend, bfloat16_is_fast, compute_dtypes, smooth_queries
from geogla.gla.config import GLAConfig

__all__ = ["GLAConfig", "attend", "bfloat16_is_fast", "compute_dtypes", "smooth_queries"]

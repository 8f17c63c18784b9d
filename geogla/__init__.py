"""geogla: training-free, open-vocabulary segmentation of very large aerial, satellite and drone
images (ProxyCLIP + GLA-CLIP's global attention across all sliding windows).

>>> import geogla
>>> result = geogla.segment("scene.tif", "building,tree|forest,road", "out")   # doctest: +SKIP
>>> result.outputs["cog"], result.outputs["gpkg"]                              # doctest: +SKIP

:func:`segment` and :func:`evaluate` do what ``geogla run`` and ``geogla eval`` do; the building
blocks are :class:`RunConfig` and :class:`GLAConfig` (settings), :func:`attend` (the attention,
pure tensors), :func:`create_model` (the frozen encoders of a preset).  ``import geogla`` is cheap:
torch and Dask are imported when first needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geogla._lazy import lazy_attributes
from geogla.errors import GeoglaError, UserInputError
from geogla.gla.config import GLAConfig
from geogla.runconfig import RunConfig

__version__ = "0.3.0"

if TYPE_CHECKING:
    from geogla.api import evaluate, segment
    from geogla.gla.dispatch import attend
    from geogla.models.factory import SegmentationModel, create_model
    from geogla.pipelines.evaluate import EvalReport
    from geogla.pipelines.run import RunResult

_LAZY = {"segment": "geogla.api", "evaluate": "geogla.api", "attend": "geogla.gla.dispatch",
         "create_model": "geogla.models.factory", "SegmentationModel": "geogla.models.factory",
         "RunResult": "geogla.pipelines.run", "EvalReport": "geogla.pipelines.evaluate"}

__all__ = ["EvalReport", "GLAConfig", "GeoglaError", "RunConfig", "RunResult", "SegmentationModel",
           "UserInputError", "__version__", "attend", "create_model", "evaluate", "segment"]


__getattr__ = lazy_attributes(__name__, _LAZY)

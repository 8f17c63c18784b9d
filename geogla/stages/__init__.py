"""The stages of a run.  Each reads its inputs from the run store and writes its outputs there.

Stages take a store URL (and which windows or blocks to do), never data, so a Dask task can run
one on any worker and a crashed run can be resumed: a stage first looks at the store's done flags
and skips what is finished.  Each returns a :class:`StageResult`.

=========  ==============================================  =====================================
stage      function                                        module
=========  ==============================================  =====================================
encode     :func:`encode_windows`                          :mod:`geogla.stages.encode`
text       :func:`embed_text`                              :mod:`geogla.stages.encode`
summary    :func:`summarize_keys`                          :mod:`geogla.stages.attend`
attend     :func:`attend_batches`                          :mod:`geogla.stages.attend`
stitch     :func:`stitch_block`                            :mod:`geogla.stages.stitch`
outputs    :func:`write_outputs`                           :mod:`geogla.stages.outputs`
evaluate   :func:`evaluate_labels` (with ``--labels``)     :mod:`geogla.stages.outputs`
=========  ==============================================  =====================================
"""

from geogla.stages.attend import (
           ATTEND_TASK_WINDOWS,
           StoreWindows,
           attend_all,
           attend_batches,
           store_algorithm,
           summarize_keys,
)
from geogla.stages.common import batch_count, batch_windows, load_model, model_for, window_batches
from geogla.stages.encode import embed_text, encode_windows
from geogla.stages.outputs import (
    evaluate_labels,
    output_locations,
    output_paths,
    recover_outputs,
    write_outputs,
)
from geogla.stages.result import StageResult, add_seconds
from geogla.stages.stitch import stitch_block, working_logits

__all__ = [
    "ATTEND_TASK_WINDOWS",
    "StageResult",
    "StoreWindows",
    "add_seconds",
    "attend_all",
    "attend_batches",
    "batch_count",
    "batch_windows",
    "embed_text",
    "encode_windows",
    "evaluate_labels",
    "load_model",
    "model_for",
    "output_locations",
    "output_paths",
    "recover_outputs",
    "stitch_block",
    "store_algorithm",
    "summarize_keys",
    "window_batches",
    "working_logits",
    "write_outputs",
]

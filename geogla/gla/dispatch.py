"""``attend``: ProxyCLIP + GLA attention over the windows of a scene (docs/method.md, section 3).

Pure tensor functions: no files, no scheduling.  :func:`geogla.gla.choose_algorithm` decides how
attention is computed; :mod:`geogla.gla.exact` and :mod:`geogla.gla.scalable` compute it.
"""

from __future__ import annotations

from torch import Tensor

from geogla.errors import ConfigError
from geogla.gla.config import GLAConfig, choose_algorithm
from geogla.gla.exact import attend_exact
from geogla.gla.local import attend_local
from geogla.gla.scalable import attend_scalable

_DEFAULT_CONFIG = GLAConfig()


def attend(
    keys: Tensor,
    values: Tensor,
    config: GLAConfig = _DEFAULT_CONFIG,
    offsets: Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Attention-weighted values of every token of every window (before CLIP's ``out_proj``).

    Args:
        keys: ``(L, N, Dk)`` float, VFM tokens of the ``L`` windows, ``N = rows * cols`` row-major,
            each row L2-normalised.
        values: ``(L, N, Dv)`` float, CLIP value tokens on the same grid.
        config: the method's switches and constants; ``choose_algorithm(config, L * N)`` picks
            exact attention (:func:`geogla.gla.exact.attend_exact`, each window alone without
            key-value extension), scalable attention (:func:`geogla.gla.scalable.attend_scalable`)
            or attention bounded to a context radius (:func:`geogla.gla.local.attend_local`).
        offsets: ``(L, 2)`` int, each window's top-left ``(row, col)`` on the scene's token grid;
            needed by query smoothing, scalable and local attention.
        grid: ``(rows, cols)`` of each window's tokens, ``rows * cols = N``; None: square windows.
            Used by query smoothing, scalable and local attention.

    Returns:
        ``(L, N, Dv)`` tensor ``A V`` in ``values.dtype`` on ``values.device``; one attention map
        serves every head, so heads need not be split.

    Raises:
        ConfigError: ``config.smoothing`` is set, or scalable or local attention is chosen, but
            ``offsets`` is missing.
        ValueError: shapes, dtypes or devices of the inputs do not fit together.
    """
    _check_inputs(keys, values, offsets, config)
    algorithm = choose_algorithm(config, keys.shape[0] * keys.shape[1])
    if algorithm == "exact" or algorithm == "window":
        return attend_exact(keys, values, config, offsets, grid)
    assert offsets is not None  # checked above: scalable and local attention need them
    if algorithm == "local":
        return attend_local(keys, values, config, offsets, grid)
    return attend_scalable(keys, values, config, offsets, grid)


def _check_inputs(keys: Tensor, values: Tensor, offsets: Tensor | None, config: GLAConfig) -> None:
    if keys.ndim != 3 or values.ndim != 3:
        raise ValueError(
            f"keys and values must be (L, N, D), got shapes {tuple(keys.shape)} and {tuple(values.shape)}"
        )
    if keys.shape[:2] != values.shape[:2]:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ in (L, N)")
    if keys.shape[0] < 1 or keys.shape[1] < 1:
        raise ValueError(f"attention needs at least one window and one token, got {tuple(keys.shape)}")
    if not keys.is_floating_point() or not values.is_floating_point():
        raise ValueError(f"keys and values must be floating point, got {keys.dtype} and {values.dtype}")
    if keys.device != values.device:
        raise ValueError(f"keys on {keys.device} and values on {values.device}")
    if config.smoothing and offsets is None:
        raise ConfigError("query smoothing needs the windows' token offsets; pass offsets=(L, 2).")
    total = keys.shape[0] * keys.shape[1]
    algorithm = choose_algorithm(config, total)
    if offsets is None and algorithm == "local":
        raise ConfigError("attention bounded to a context radius needs the windows' token offsets; "
                          "pass offsets=(L, 2).")
    if offsets is None and algorithm == "scalable":
        raise ConfigError(
            f"scalable attention (algorithm={config.algorithm!r}, {total} tokens, exact_max_tokens="
            f"{config.exact_max_tokens}) needs the windows' token offsets; pass offsets=(L, 2)."
        )
    if offsets is not None and (offsets.shape != (keys.shape[0], 2) or offsets.is_floating_point()):
        raise ValueError(f"offsets must be an integer tensor of shape ({keys.shape[0]}, 2)")

"""Resizing images the way the remote-sensing protocol's reference code does.

The reference (SegEarth-OV / ProxyCLIP / GLA-CLIP, all on mmsegmentation) resizes each image with
mmcv's ``Resize(scale=(448, 448), keep_ratio=True)`` (SegEarth-OV configs/cfg_vaihingen.py,
``test_pipeline``): mmcv/image/geometric.py ``imrescale`` takes the size from ``rescale_size`` and
``_scale_size`` (:func:`long_side_shape`) and the pixels from ``imresize``, i.e.
``cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)``.  For 8-bit images
:func:`resize_linear` reproduces OpenCV's fixed-point arithmetic bit for bit (tests compare it with
OpenCV itself), so that the models see the same pixels as in the reference without depending on
OpenCV at run time.
"""

from __future__ import annotations

from typing import cast

import numpy as np

#: OpenCV's fixed-point precision of INTER_LINEAR on 8-bit images (imgproc/src/resize.cpp:
#: INTER_RESIZE_COEF_BITS = 11, INTER_RESIZE_COEF_SCALE = 2048).
_COEF_BITS = 11
_COEF_SCALE = np.float32(1 << _COEF_BITS)


def long_side_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``(height, width)`` after resizing so that the long side is ``long_side``, aspect kept.

    mmcv's ``rescale_size`` with a square scale: factor ``long_side / max(shape)``, each side
    ``int(side * factor + 0.5)`` (rounded half up), at least 1.
    """
    factor = long_side / max(shape)
    return (max(1, int(shape[0] * factor + 0.5)), max(1, int(shape[1] * factor + 0.5)))


def resize_linear(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``pixels`` ``(bands, h, w)`` resized to ``shape`` ``(H, W)`` bilinearly, dtype kept.

    uint8: exactly OpenCV's ``INTER_LINEAR`` (half-pixel centres, 11-bit fixed-point weights,
    its rounding).  Other dtypes: float bilinear with half-pixel centres (``align_corners=False``,
    no antialiasing), integers rounded to nearest and clipped; OpenCV's own arithmetic for those
    differs by a unit or so, and the protocol's benchmarks are all 8-bit.
    """
    if pixels.shape[1:] == shape:
        return pixels
    if pixels.dtype == np.uint8:
        return _resize_linear_u8(pixels, shape)
    import torch  # not at module level: opening a scene must not import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(pixels.astype(np.float32))[None], size=shape, mode="bilinear",
                        align_corners=False)[0].numpy()
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(pixels.dtype)


def _source_positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's source index and fraction per output pixel along one axis.

    ``fx = (float)((dx + 0.5) * scale - 0.5)`` with ``scale = 1 / (n_out / n_in)`` in double, then
    ``sx = floor(fx)`` and ``fx -= sx`` in single precision (resize.cpp, resizeGeneric setup).
    """
    scale = 1.0 / (np.float64(n_out) / np.float64(n_in))
    pos = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(pos)
    return index.astype(np.int64), (pos - index).astype(np.float32)


def _weights(frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two fixed-point weights ``saturate_cast<short>(w * 2048)`` (round half to even)."""
    w0 = np.rint((np.float32(1) - frac) * _COEF_SCALE).astype(np.int64)
    w1 = np.rint(frac * _COEF_SCALE).astype(np.int64)
    return w0, w1


def _resize_linear_u8(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    _, h, w = pixels.shape
    height, width = shape
    src = pixels.astype(np.int64)
    # Columns: outside the image the weight goes wholly to the edge pixel (fx = 0, sx clamped).
    sx, fx = _source_positions(w, width)
    outside = (sx < 0) | (sx >= w - 1)
    fx[outside] = 0
    sx = np.clip(sx, 0, w - 1)
    a0, a1 = _weights(fx)
    rows = src[:, :, sx] * a0 + src[:, :, np.minimum(sx + 1, w - 1)] * a1  # scaled by 2048
    # Rows: OpenCV keeps the fraction and clamps the row indices instead.
    sy, fy = _source_positions(h, height)
    b0, b1 = _weights(fy)
    top = rows[:, np.clip(sy, 0, h - 1)] >> 4
    bottom = rows[:, np.clip(sy + 1, 0, h - 1)] >> 4
    # VResizeLinear<uchar, int, short, ...>: ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16),
    # then (+ 2) >> 2
    out = (((b0[:, None] * top) >> 16) + ((b1[:, None] * bottom) >> 16) + 2) >> 2
    return cast(np.ndarray, np.clip(out, 0, 255).astype(np.uint8))

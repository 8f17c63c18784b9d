"""Resampling a ViT's learned positional embedding to another token grid, as the reference does.

ProxyCLIP's bundled open_clip (open_clip/transformer.py, ``VisionTransformer.interpolate_pos_encoding``)
and DINO (facebookresearch/dino, vision_transformer.py, ``VisionTransformer.interpolate_pos_encoding``)
both resample the trained ``M x M`` grid to ``h x w`` tokens with::

    w0, h0 = w0 + 0.1, h0 + 0.1
    nn.functional.interpolate(grid, scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode='bicubic')

(DINOv2's hub model does the same with its ``interpolate_offset = 0.1`` and no antialiasing.)  The
scale factor, not the target size, sets where the samples fall: output pixel ``i`` reads the
trained grid at ``(i + 0.5) * M / (h + 0.1) - 0.5``, not at ``(i + 0.5) * M / h - 0.5`` as a resize
to ``size=(h, w)`` would, and no antialiasing is applied.  timm's dynamic image size (antialiased
bicubic to the target size) gives embeddings 10-40% away from these at crops of 112 to 448.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: The reference's offset added to the target grid before dividing by the trained one.
_OFFSET = 0.1


def resample_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The trained ``(1, C, M, M)`` positional grid resampled to ``(1, C, h, w)`` (see the module).

    The trained size itself is returned unchanged, as the reference skips the interpolation there.
    """
    trained = int(grid.shape[-1])
    if tuple(size) == (trained, trained):
        return grid
    scale = ((size[0] + _OFFSET) / trained, (size[1] + _OFFSET) / trained)
    out = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(out.shape[-2:]) != tuple(size):  # floor(M * (n + 0.1) / M) is n for every n in use
        raise RuntimeError(
            f"resampling a {trained} x {trained} positional grid gave {tuple(out.shape[-2:])}, "
            f"not {tuple(size)}"
        )
    return out

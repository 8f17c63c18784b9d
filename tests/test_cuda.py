"""The code paths only a GPU exercises: 16-bit encoders on CUDA and a whole run there.  Every test
skips without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import geogla
from geogla.models import create_model
from geogla.precision import encoder_dtype
from geogla.store import RunStore

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_precision_is_16_bit_on_cuda() -> None:
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert encoder_dtype("auto", torch.device("cuda")) == want


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_16_bit_encoders_on_cuda_follow_float32() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 224, 224)
    full = create_model("tiny", weights="random", device="cuda", precision="float32")
    half = create_model("tiny", weights="random", device="cuda", precision="auto")
    assert half.dtype in (torch.bfloat16, torch.float16)
    with torch.inference_mode():
        k32, v32 = full.encode(images.cuda())
        k16, v16 = half.encode(images.cuda())
    # bfloat16 keeps 8 significant bits: per-token errors of a few percent after a few blocks
    rel = ((k16.float() - k32).norm(dim=-1) / k32.norm(dim=-1)).median()
    assert k16.shape == k32.shape and v16.shape == v32.shape and float(rel) < 0.05


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_run_on_cuda_writes_its_outputs_and_a_16_bit_store(scene_tif: Path, tmp_path: Path) -> None:
    result = geogla.segment(scene_tif, "a,b", tmp_path / "out", model="tiny", weights="random", device="cuda")
    store = RunStore.open(result.store_url)
    assert store.array("keys").dtype == np.int16 and store.array("features").dtype == np.float16
    assert Path(result.outputs["cog"]).is_file() and result.valid_windows == 6

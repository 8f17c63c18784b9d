"""16-bit encoders (``--precision``) and the 16-bit run store."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from geogla import precision, stages
from geogla.classes import parse_classes
from geogla.errors import StoreError
from geogla.models import RandomWeightsWarning, SegmentationModel, create_model
from geogla.runconfig import RunConfig
from geogla.scene import SceneReader, open_scene
from geogla.store import CHECKSUM, FORMAT, RunStore, dequantize_keys, quantize_keys, window_bytes
from tests.conftest import structured_rgb, write_geotiff

pytestmark = [pytest.mark.filterwarnings("ignore::geogla.models.weights.RandomWeightsWarning")]


def _tiny(precision: str) -> SegmentationModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_model("tiny", weights="random", precision=precision)


def test_auto_precision_follows_what_the_device_computes_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert precision.encoder_dtype("float32", cpu) == torch.float32
    assert precision.encoder_dtype("bfloat16", cpu) == torch.bfloat16
    assert precision.encoder_dtype("float16", cpu) == torch.float16
    monkeypatch.setattr(precision, "bfloat16_is_fast", lambda device: True)
    assert precision.encoder_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "bfloat16_is_fast", lambda device: False)
    assert precision.encoder_dtype("auto", cpu) == torch.float32  # emulated bfloat16 would be slower
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.encoder_dtype("half", cpu)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_encoders_keep_the_text_tower_and_the_outputs_in_float32(dtype: str) -> None:
    reference, model = _tiny("float32"), _tiny(dtype)
    assert model.dtype == getattr(torch, dtype) and reference.dtype == torch.float32
    assert model.vfm is not None and model.vfm.dtype == model.dtype
    assert model.clip.model.token_embedding.weight.dtype == torch.float32  # the text tower
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    keys, values = model.encode(images)
    want_keys, want_values = reference.encode(images)
    assert keys.dtype == torch.float32 and torch.allclose(keys.norm(dim=-1), torch.ones(2, 784))
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation), float16 11: through two
    # random blocks the outputs stay within a few percent of float32 for bfloat16, tenths for float16.
    tolerance = 0.05 if dtype == "bfloat16" else 0.01
    for got, want in ((keys, want_keys), (values.float(), want_values)):
        error = (got - want).norm(dim=-1) / want.norm(dim=-1)
        assert float(error.median()) < tolerance
    assert torch.equal(model.embed_text(["tree"]), reference.embed_text(["tree"]))  # float32 text
    features = model.project(values)
    assert features.dtype == torch.float32 and features.shape == (2, 784, 32)


def _store(tmp_path: Path, **config: object) -> RunStore:
    scene = open_scene(str(write_geotiff(tmp_path / "s.tif", structured_rgb(224, 336))))
    run = RunConfig(classes=parse_classes("a,b"), model="tiny", weights="random", device="cpu",
                    **config)  # type: ignore[arg-type]
    model = stages.load_model("tiny", "random", None, None, "cpu", run.precision)
    store, _ = RunStore.create_or_resume(str(tmp_path / "s.zarr"), scene, run, **model.store_dims())
    return store


def test_the_store_keeps_16_bit_vectors_uncompressed_and_the_values_on_clips_grid(tmp_path: Path) -> None:
    store = _store(tmp_path, precision="float32")
    for ids in stages.window_batches(store):
        stages.encode_windows(store.url, ids)
    stages.embed_text(store.url)
    stages.attend_all(store.url)
    assert store.value_grid == (14, 14) and store.token_grid == (28, 28)
    names = ("keys", "key_scale", "values", "features")
    shapes = {name: store.array(name).shape for name in names}
    assert shapes == {"keys": (2, 784, 64), "key_scale": (2, 784), "values": (2, 196, 64),
                      "features": (2, 784, 32)}
    dtypes = {name: store.array(name).dtype for name in names}
    assert dtypes == {"keys": np.int16, "key_scale": np.float32, "values": np.float16, "features": np.float16}
    # uncompressed: each chunk only ends in its CRC-32C
    assert all(store.array(name).compressors == (CHECKSUM,) for name in names)
    per_window = sum(window_bytes(store.token_grid, store.value_grid, 64, 64, 32))
    stored = sum(f.stat().st_size for name in names for f in (tmp_path / "s.zarr" / name).rglob("*")
                 if f.is_file() and f.name != "zarr.json")
    # the shards hold the bytes, 4 bytes of checksum per inner chunk and a small index (16 bytes per
    # inner chunk, and its own checksum)
    assert per_window * 2 <= stored <= per_window * 2 + (16 + 4) * 2 * len(names) + 1024
    # The keys come back within half a step of their token's scale (and float32 rounding of it).
    model = stages.model_for(store)
    with SceneReader(store.scene) as reader:
        canvas = store.grid.canvas.place(*reader.read(store.grid.window(0)), model.pad_colour)
    keys = model.encode_keys(torch.from_numpy(canvas)[None])[0].float()
    got_keys = stages.StoreWindows(store, np.arange(2)).keys([0])[0]
    step = torch.from_numpy(store.read("key_scale", 0))[:, None]
    assert bool(((got_keys - keys).abs() <= step / 2 * (1 + 1e-3) + 2**-24 * keys.abs()).all())
    # The values come back on the key grid as the encoder gives them there (CLIP's values resized),
    # but for the float16 rounding of what is stored: each is a convex combination of stored values,
    # each within 2^-12 relative of the value it stands for, so within 2^-11 of the largest of them.
    want = model.encode_values(torch.from_numpy(canvas)[None])[0]
    got = stages.StoreWindows(store, np.arange(2)).values([0])[0]
    assert got.shape == (784, 64) and got.dtype == torch.float32
    kept = torch.from_numpy(store.read("values", 0)).float()
    assert bool(((got - want).abs() <= 2**-11 * kept.abs().amax(dim=0) + 1e-6).all())


def test_a_store_of_another_format_or_precision_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, precision="float32")
    meta = store.meta
    group = zarr.open_group(store.url, mode="r+")
    group.attrs["geogla"] = {**meta, "format": FORMAT - 1}
    with pytest.raises(StoreError, match=rf"store format {FORMAT - 1}, this one writes {FORMAT}"):
        _store(tmp_path, precision="float32")
    group.attrs["geogla"] = meta
    with pytest.raises(StoreError, match="another scene or configuration"):  # keys of other precision
        _store(tmp_path, precision="bfloat16")


def test_keys_are_stored_as_integers_in_units_of_their_tokens_largest_magnitude() -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(3, 50, 64))
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    keys[1, 7] = 0.0  # a padding token
    stored, scale = quantize_keys(keys, np.int16)
    assert stored.dtype == np.int16 and scale.dtype == np.float32 and scale.shape == (3, 50)
    assert int(np.abs(stored).max(axis=-1).min(initial=32767, where=scale != 1)) == 32767
    back = dequantize_keys(stored, scale)
    assert not back[1, 7].any()
    # half a step of the token's scale, and the float32 rounding of the product
    assert bool((np.abs(back - keys) <= scale[..., None] / 2 * (1 + 1e-6) + 2**-24 * np.abs(keys)).all())
    # a typical component's error is several times below float16's
    err16 = np.abs(keys.astype(np.float16).astype(np.float64) - keys).mean()
    assert np.abs(back - keys).mean() < err16 / 4
    # a float key dtype is a cast, scale 1
    cast, ones = quantize_keys(keys, np.float32)
    assert (
        cast.dtype == np.float32 and bool((ones == 1).all()) and np.array_equal(cast, keys.astype(np.float32))
    )
    with pytest.raises(ValueError, match="infinities"):
        quantize_keys(np.full((2, 4), np.inf), np.int16)

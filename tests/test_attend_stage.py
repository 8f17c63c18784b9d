"""The attend stage streams attention through the run store: the summary, then attend tasks over
batches that read only the windows they need; features equal in-memory attention's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geogla import stages
from geogla.classes import parse_classes
from geogla.gla import GLAConfig, attend
from geogla.gla.scalable import ScalableAttention
from geogla.pipelines.run import attend_parts
from geogla.runconfig import RunConfig
from geogla.scene import open_scene
from geogla.store import RunStore, dequantize_keys, quantize_keys
from tests.conftest import structured_rgb, write_geotiff


def _encoded_store(tmp_path: Path, attention: GLAConfig, name: str = "s") -> RunStore:
    scene = open_scene(str(write_geotiff(tmp_path / f"{name}.tif", structured_rgb(560, 780))))
    config = RunConfig(classes=parse_classes("building,tree,road"), model="tiny", weights="random",
                       device="cpu", attention=attention)
    model = stages.load_model("tiny", "random", None, None, "cpu")
    store, _ = RunStore.create_or_resume(str(tmp_path / f"{name}.zarr"), scene, config,
                                         **model.store_dims())
    for ids in stages.window_batches(store):
        stages.encode_windows(store.url, ids)
    return store


def _in_memory_features(store: RunStore, attention: GLAConfig) -> np.ndarray:
    """What the attend stage must store: attention over all windows at once, then projection."""
    model = stages.model_for(store)
    offsets = torch.from_numpy(store.grid.token_offsets(store.token_size))
    source, every = stages.StoreWindows(store, np.arange(len(store.grid))), list(range(len(store.grid)))
    attended = attend(source.keys(every), source.values(every), attention, offsets=offsets)
    return F.normalize(model.project(attended).float(), dim=-1).numpy()


@pytest.mark.parametrize("attention", [
    GLAConfig(algorithm="scalable", far_samples=300, prototypes=8, precision="float32"),
    GLAConfig(algorithm="scalable", far_samples=300, prototypes=8, precision="float32", mean="window"),
    GLAConfig.proxyclip(smoothing=True),
], ids=["scalable", "scalable-window-mean", "per-window-smoothing"])
def test_streamed_attention_equals_in_memory_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       attention: GLAConfig) -> None:
    monkeypatch.setattr(stages, "ATTEND_TASK_WINDOWS", 8)  # one batch per task: many tasks
    store = _encoded_store(tmp_path, attention)
    assert len(store.grid) == 4 * 6 and len(attend_parts(store)) == 3
    read = []
    source_read = stages.StoreWindows._read

    def counting(self: stages.StoreWindows, name: str, windows: list[int]) -> torch.Tensor:
        read.append(len(windows))
        return source_read(self, name, windows)

    monkeypatch.setattr(stages.StoreWindows, "_read", counting)
    stages.summarize_keys(store.url)
    summary_reads = sum(read)
    read.clear()
    for part in reversed(attend_parts(store)):  # any order: tasks are independent
        stages.attend_batches(store.url, part)
    assert bool(store.read("windows/attended").all())
    if attention.kv_extension:
        # each task reads the windows near its batch, not the scene
        assert summary_reads >= 2 * 24 and max(read) < 24
    want = _in_memory_features(store, attention)
    # stored in float16: within one float16 step of unit-vector components (2^-11), which also covers
    # float32 sums in another order
    np.testing.assert_allclose(store.read("features").astype(np.float32), want, rtol=0, atol=2**-11)


def test_attended_batches_are_not_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attention = GLAConfig(algorithm="scalable", far_samples=300, prototypes=8, precision="float32")
    store = _encoded_store(tmp_path, attention)
    stages.summarize_keys(store.url)
    parts = attend_parts(store)
    stages.attend_batches(store.url, parts[0])
    before = store.read("features")
    calls = []
    def record(self: ScalableAttention, source: object, windows: list[int]) -> torch.Tensor:
        calls.append(list(windows))
        return torch.zeros(0)

    monkeypatch.setattr(ScalableAttention, "__call__", record)
    assert stages.attend_batches(store.url, parts[0]).skipped
    assert calls == []
    np.testing.assert_array_equal(store.read("features"), before)


def test_exact_attention_is_one_task_and_nodata_windows_stay_empty(tmp_path: Path) -> None:
    store = _encoded_store(tmp_path, GLAConfig(algorithm="exact", precision="float32"))
    assert attend_parts(store) == [list(range(len(stages.window_batches(store))))]
    valid = store.read("windows/valid").copy()
    valid[3] = False
    store.array("windows/valid")[:] = valid
    stages.attend_all(store.url)
    features = store.read("features").astype(np.float64)
    # unit vectors rounded to float16: each component within 2^-12, the norm within 2^-12 sqrt(E)
    bound = 2**-12 * np.sqrt(features.shape[-1]) + 1e-6
    assert not features[3].any() and bool(np.abs(np.linalg.norm(features[valid], axis=-1) - 1).max() < bound)


def test_window_cache_holds_single_windows_not_the_runs_they_were_read_with(tmp_path: Path) -> None:
    store = _encoded_store(tmp_path, GLAConfig(algorithm="scalable"))
    rows = np.arange(len(store.grid))
    one_window = store.tokens_per_window * store.array("keys").shape[2] * 4
    source = stages.StoreWindows(store, rows, cache_mb=max(1, 3 * one_window // 2**20 + 1))
    got = source.keys(list(range(len(rows))))  # one run of every window; the cache keeps the last few
    assert torch.equal(got, torch.from_numpy(dequantize_keys(store.read("keys"), store.read("key_scale"))))
    cached = list(source._cache.values())
    assert 0 < len(cached) < len(rows)
    # Each entry owns its window alone: it does not pin the run's whole buffer.
    assert all(t.untyped_storage().nbytes() == one_window for t in cached)


def _filled_store(tmp_path: Path, width: int, attention: GLAConfig) -> RunStore:
    """A run store of a 560 x ``width`` scene whose windows hold random unit keys and random values,
    as if encoded (no encoder run), in batches of 4 windows."""
    scene = open_scene(str(write_geotiff(tmp_path / f"w{width}.tif", structured_rgb(560, width))))
    config = RunConfig(classes=parse_classes("a,b"), model="tiny", weights="random", device="cpu",
                       attention=attention, batch_size=4)
    model = stages.load_model("tiny", "random", None, None, "cpu")
    store, _ = RunStore.create_or_resume(
        str(tmp_path / f"w{width}.zarr"), scene, config, **model.store_dims()
    )
    rng = np.random.default_rng(0)
    keys = rng.normal(size=store.array("keys").shape)
    stored, scale = quantize_keys(
        keys / np.linalg.norm(keys, axis=-1, keepdims=True), store.array("keys").dtype
    )
    store.array("keys")[:] = stored
    store.array("key_scale")[:] = scale
    store.array("values")[:] = rng.normal(size=store.array("values").shape).astype(np.float16)
    store.array("windows/valid")[:] = True
    store.array("windows/encoded")[:] = True
    return store


@pytest.mark.parametrize("attention", [
    GLAConfig(algorithm="scalable", far_samples=300, prototypes=8, precision="float32"),
    GLAConfig.proxyclip(smoothing=True),
], ids=["scalable", "per-window-smoothing"])
def test_what_a_task_reads_does_not_grow_with_the_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        attention: GLAConfig) -> None:
    """An attend task and a stitch task read the same window flags and windows on a scene twice as wide:
    those of their own neighbourhood, found from the grid's arithmetic, not the scene's."""
    flags: list[int] = []
    windows: list[int] = []
    read, read_rows, source_read = RunStore.read, RunStore.read_rows, stages.StoreWindows._read

    def count_read(self: RunStore, name: str, selection: object = slice(None)) -> np.ndarray:
        out = read(self, name, selection)
        if name == "windows/valid":
            flags.append(out.size)
        return out

    def count_rows(self: RunStore, name: str, rows: object) -> np.ndarray:
        out = read_rows(self, name, rows)  # type: ignore[arg-type]
        if name == "windows/valid":
            flags.append(out.size)
        return out

    def count_windows(self: stages.StoreWindows, name: str, ids: list[int]) -> torch.Tensor:
        windows.append(len(ids))
        return source_read(self, name, ids)

    seen = []
    for width in (1456, 2800):  # 12 and 24 windows a row, 4 rows
        store = _filled_store(tmp_path, width, attention)
        assert len(store.grid) == 4 * (12 if width == 1456 else 24)
        stages.summarize_keys(store.url)
        stages.embed_text(store.url)
        monkeypatch.setattr(RunStore, "read", count_read)
        monkeypatch.setattr(RunStore, "read_rows", count_rows)
        monkeypatch.setattr(stages.StoreWindows, "_read", count_windows)
        flags.clear()
        windows.clear()
        stages.attend_batches(store.url, [1])  # windows 4..7 of the first row
        attend_reads = (sum(flags), sum(windows))
        stages.attend_all(store.url)
        flags.clear()
        stages.stitch_block(store.url, 0)  # the first 1024 x 1024 pixels
        seen.append((attend_reads, sum(flags)))
        monkeypatch.undo()
    assert seen[0] == seen[1]
    assert 4 <= seen[0][0][0] < 4 * 12 and 0 < seen[0][1] < 4 * 12

"""A run store whose metadata is lost, unreadable or edited is refused with one sentence (exit code
2, naming ``--overwrite``), never trusted; ``--overwrite`` then gives the clean run's outputs."""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

import geogla
from geogla.cli import main
from geogla.errors import DamagedStoreError
from tests.conftest import structured_rgb, write_geotiff

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--model", "tiny", "--weights", "random", "-q"]


def _errors(err: str) -> list[str]:
    """The lines of ``err`` but the random-weights banner that every new run prints."""
    return [line for line in err.strip().splitlines() if not line.startswith("WARNING: --weights random")]


def _truncate(relative: str) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        path = store / relative / "zarr.json"
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
    return damage


def _edit_attrs(edit: Callable[[dict[str, object]], object]) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        path = store / "zarr.json"
        doc = json.loads(path.read_text())
        edit(doc["attributes"]["geogla"])
        path.write_text(json.dumps(doc))
    return damage


def _set(section: str, key: str, value: object) -> Callable[[dict[str, object]], None]:
    def edit(meta: dict[str, object]) -> None:
        part = meta[section]
        assert isinstance(part, dict)
        part[key] = value
    return edit


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "root metadata truncated": (_truncate("."), "its metadata cannot be read"),
    "keys metadata truncated": (_truncate("keys"), "the metadata of its array keys cannot be read"),
    "validity metadata truncated": (_truncate("windows/valid"), "array windows/valid cannot be read"),
    "class raster metadata truncated": (_truncate("classes"), "array classes cannot be read"),
    "keys metadata deleted": (
        lambda store: (store / "keys" / "zarr.json").unlink(), "its array keys is missing"
    ),
    "grid stride edited": (_edit_attrs(_set("grid", "stride", 56)), "window grid does not follow"),
    "configured stride edited": (
        _edit_attrs(_set("config", "stride", 56)), "do not match their own fingerprint"
    ),
    "scene removed": (_edit_attrs(lambda meta: meta.pop("scene")), "attributes are incomplete"),
}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A finished run of a small scene: the scene, its output folder and its class raster."""
    work = tmp_path_factory.mktemp("clean")
    scene = write_geotiff(work / "scene.tif", structured_rgb(300, 420))
    out = work / "out"
    assert main(["run", str(scene), "--classes", "building,tree", "-o", str(out), *TINY]) == 0
    with rasterio.open(out / "scene.classes.tif") as src:
        return scene, out, src.read(1)


def _damaged_copy(clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path, damage: str) -> Path:
    out = tmp_path / "out"
    shutil.copytree(clean_run[1], out)
    DAMAGES[damage][0](out / "scene.zarr")
    return out


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_is_refused_with_one_sentence(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _damaged_copy(clean_run, tmp_path, damage)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", str(clean_run[0]), "--classes", "building,tree", "-o", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "is damaged" in err[0] and DAMAGES[damage][1] in err[0] and "--overwrite" in err[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing written


def test_other_classes_on_a_damaged_store_are_refused_too(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    out = _damaged_copy(clean_run, tmp_path, "keys metadata truncated")
    with pytest.raises(DamagedStoreError, match="array keys"):
        geogla.segment(clean_run[0], "water,grass", out, model="tiny", weights="random")


@pytest.mark.parametrize("damage", ["root metadata truncated", "grid stride edited"])
def test_overwrite_after_damage_gives_the_clean_outputs(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path, damage: str
) -> None:
    out = _damaged_copy(clean_run, tmp_path, damage)
    args = ["run", str(clean_run[0]), "--classes", "building,tree", "-o", str(out), *TINY, "--overwrite"]
    assert main(args) == 0
    with rasterio.open(out / "scene.classes.tif") as src:
        assert np.array_equal(src.read(1), clean_run[2])


def _flip_a_byte(path: Path) -> None:
    """Damage ``path`` at rest: one byte inside its first chunk's data (a shard's index is at its end)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


#: A chunk (shard) deleted (found on resume) or damaged (found when a stage reads it), then a rerun:
#: classes and options of the rerun.
DAMAGED_CHUNKS: dict[str, tuple[str, Callable[[Path], None], str, list[str]]] = {
    "keys shard lost, then other attention":
        ("keys/c/0/0/0", Path.unlink, "building,tree", ["--attention", "proxyclip"]),
    "values shard lost, same command": ("values/c/0/0/0", Path.unlink, "building,tree", []),
    "features shard lost, then other classes": ("features/c/0/0/0", Path.unlink, "water,grass", []),
    "class raster block lost, same command": ("classes/c/0/0", Path.unlink, "building,tree", []),
    "text embeddings lost, same command": ("text/c/0/0", Path.unlink, "building,tree", []),
    "keys shard damaged, then other attention":
        ("keys/c/0/0/0", _flip_a_byte, "building,tree", ["--attention", "proxyclip"]),
    "values shard damaged, then other attention":
        ("values/c/0/0/0", _flip_a_byte, "building,tree", ["--attention", "proxyclip"]),
    "features shard damaged, then other classes": ("features/c/0/0/0", _flip_a_byte, "water,grass", []),
    "class raster block damaged, same command": ("classes/c/0/0", _flip_a_byte, "building,tree", []),
}


@pytest.mark.parametrize("case", list(DAMAGED_CHUNKS))
def test_lost_and_damaged_chunks_are_made_again_and_said(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chunk, damage, classes, extra = DAMAGED_CHUNKS[case]
    scene = str(clean_run[0])
    reference = tmp_path / "reference"
    assert main(["run", scene, "--classes", classes, "-o", str(reference), *TINY, *extra]) == 0
    out = tmp_path / "out"
    shutil.copytree(clean_run[1], out)
    damage(out / "scene.zarr" / chunk)
    capsys.readouterr()
    assert main(["run", scene, "--classes", classes, "-o", str(out), *TINY, *extra]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if re.search(r"\blost\b", line)]
    assert len(notes) == 1 and "again" in notes[0], err
    assert ("read a damaged chunk" in err) == (damage is _flip_a_byte), err
    with rasterio.open(out / "scene.classes.tif") as got, \
            rasterio.open(reference / "scene.classes.tif") as want:
        assert np.array_equal(got.read(1), want.read(1))
    assert main(["run", scene, "--classes", classes, "-o", str(out), *TINY, *extra]) == 0
    assert not re.search(r"\blost\b|damaged chunk", capsys.readouterr().err)  # made again: nothing lost now


def test_chunks_that_stay_damaged_end_the_run_with_one_sentence(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geogla.store import RunStore

    out = tmp_path / "out"
    shutil.copytree(clean_run[1], out)
    _flip_a_byte(out / "scene.zarr" / "features" / "c" / "0" / "0" / "0")
    # a disk that damages what is written: the repairs never take
    def never_repaired(self: RunStore, verify: bool = False) -> list[str]:
        return ["made again"] if verify else []

    monkeypatch.setattr(RunStore, "reset_lost_chunks", never_repaired)
    capsys.readouterr()
    assert main(["run", str(clean_run[0]), "--classes", "water,grass", "-o", str(out), *TINY]) == 1
    err = _errors(capsys.readouterr().err)
    assert "Traceback" not in "".join(err) and "still fail their checksums" in err[-1], err
    assert sum("read a damaged chunk" in line for line in err) == 2, err


def test_a_damaged_far_summary_is_made_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = str(write_geotiff(tmp_path / "scene.tif", structured_rgb(300, 420)))
    args = ["--classes", "building,tree", *TINY, "--attention-algorithm", "scalable"]
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main(["run", scene, "-o", str(reference), *args]) == 0
    shutil.copytree(reference, out)
    store = out / "scene.zarr"
    chunks = [p for p in (store / "summary").rglob("*") if p.is_file() and p.name != "zarr.json"]
    _flip_a_byte(max(chunks, key=lambda p: p.stat().st_size))
    (store / "features" / "c" / "0" / "0" / "0").unlink()  # attend runs again, and reads the summary
    capsys.readouterr()
    assert main(["run", scene, "-o", str(out), *args]) == 0
    err = capsys.readouterr().err
    assert "far summary was lost or damaged" in err, err
    with rasterio.open(out / "scene.classes.tif") as got, \
            rasterio.open(reference / "scene.classes.tif") as want:
        assert np.array_equal(got.read(1), want.read(1))


def test_damaged_features_of_a_compacted_store_are_refused(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean_run[1], out)
    scene = str(clean_run[0])
    assert main(["run", scene, "--classes", "building,tree", "-o", str(out), *TINY, "--compact"]) == 0
    _flip_a_byte(out / "scene.zarr" / "features" / "c" / "0" / "0" / "0")
    capsys.readouterr()
    assert main(["run", scene, "--classes", "water,grass", "-o", str(out), *TINY]) == 2
    err = _errors(capsys.readouterr().err)
    assert "is damaged" in err[-1] and "compacted" in err[-1] and "--overwrite" in err[-1], err
    assert "Traceback" not in "".join(err)


def test_lost_features_of_a_compacted_store_are_refused(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean_run[1], out)
    scene = clean_run[0]
    geogla.segment(scene, "building,tree", out, model="tiny", weights="random", compact=True)
    (out / "scene.zarr" / "features" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(DamagedStoreError, match="compacted"):
        geogla.segment(scene, "water,grass", out, model="tiny", weights="random")


def test_temporaries_of_a_killed_run_are_gone_after_the_next(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean_run[1], out)
    # what a run killed while writing its COG and its GeoPackage leaves (their own prefixes)
    stale = [".scene.classes.tif.0123456789ab.src.tif", ".scene.classes.tif.0123456789ab.part.tif",
             ".scene.gpkg.a1b2c3d4e5f6.part.gpkg", ".scene.gpkg.a1b2c3d4e5f6.part.gpkg-journal"]
    kept = [".scene.classes.tif.notours.tif", ".other.gpkg.a1b2c3d4e5f6.part.gpkg", "notes.txt"]
    for name in stale + kept:
        (out / name).write_text("x")
    assert main(["run", str(clean_run[0]), "--classes", "water,grass", "-o", str(out), *TINY]) == 0
    left = {p.name for p in out.iterdir()}
    assert not left & set(stale) and set(kept) <= left
    assert not [name for name in left if name.startswith(".") and name not in kept]


@pytest.mark.parametrize("writer", ["write_class_cog", "write_geopackage"])
def test_a_full_disk_ends_in_one_sentence_and_the_same_command_resumes(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path, writer: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import geogla.stages.outputs as outputs

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    args = ["run", str(clean_run[0]), "--classes", "building,tree", "-o", str(out), *TINY]
    with monkeypatch.context() as patched:
        patched.setattr(outputs, writer, full)
        capsys.readouterr()
        assert main(args) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "disk is full" in err[0] and "same command" in err[0]
    assert main(args) == 0  # space freed
    with rasterio.open(out / "scene.classes.tif") as src:
        assert np.array_equal(src.read(1), clean_run[2])


def test_a_store_lost_mid_run_ends_in_one_sentence_and_the_same_command_starts_afresh(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import geogla.stages as stages

    stitch = stages.stitch_block

    def store_removed_first(url: str, block: int) -> object:
        shutil.rmtree(url, ignore_errors=True)  # another process, or a lost mount
        return stitch(url, block)

    out = tmp_path / "out"
    args = ["run", str(clean_run[0]), "--classes", "building,tree", "-o", str(out), *TINY]
    with monkeypatch.context() as patched:
        patched.setattr(stages, "stitch_block", store_removed_first)
        capsys.readouterr()
        assert main(args) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "disappeared during the run" in err[0] and "same command" in err[0], err
    assert main(args) == 0
    with rasterio.open(out / "scene.classes.tif") as src:
        assert np.array_equal(src.read(1), clean_run[2])


def test_a_fault_ends_in_one_sentence_and_verbose_shows_the_stack(
    clean_run: tuple[Path, Path, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import geogla.stages.outputs as outputs

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a worker lost its connection\nsecond line")

    monkeypatch.setattr(outputs, "write_class_cog", broken)
    args = ["run", str(clean_run[0]), "--classes", "building,tree", "-o", str(tmp_path / "out"), *TINY]
    capsys.readouterr()
    assert main(args) == 1
    err = _errors(capsys.readouterr().err)
    assert err == ["geogla: error: RuntimeError: a worker lost its connection; the work done so far is kept "
                   "in the run store: run the same command again to resume (-v shows the details)."]
    assert main([*[a for a in args if a != "-q"], "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err

"""Scenes and outputs in object storage (issue 21): an S3-compatible server on loopback (moto),
runs on one machine and on a two-worker Dask cluster whose workers share no directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import s3fs
from distributed import Client, LocalCluster

from geogla.cli import main
from geogla.env import s3_endpoint_options
from tests.conftest import S3_BUCKET, structured_rgb, write_geotiff

TINY = ["--model", "tiny", "--weights", "random"]
CLASSES = "building,tree,road"


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


def _same_polygons(url: str, reference: Path, scratch: Path) -> None:
    """The GeoPackage at ``url`` has ``reference``'s layers, each with its polygons' count and area."""
    local = scratch / f"fetched-{os.getpid()}-{id(url)}.gpkg"
    _fs().get_file(url.removeprefix("s3://"), str(local))

    def layers(path: Path) -> dict[str, tuple[int, float]]:
        out = {}
        for name, geometry in pyogrio.list_layers(path):
            if geometry is None:  # layer_styles
                continue
            frame = pyogrio.read_dataframe(path, layer=name)
            out[str(name)] = (len(frame), round(float(frame["area"].sum()), 6))
        return out

    assert layers(local) == layers(reference)


def _same_classes(url: str, reference: Path) -> None:
    """The class COG at ``url`` has ``reference``'s pixels, transform and CRS."""
    with rasterio.open(reference) as local:
        expected, transform, crs = local.read(1), local.transform, local.crs
    with rasterio.Env(**s3_endpoint_options(os.environ)), rasterio.open(url) as remote:
        assert remote.transform == transform and remote.crs == crs
        np.testing.assert_array_equal(remote.read(1), expected)


@pytest.fixture(scope="module")
def s3_scene(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A 300 x 420 scene uploaded to the loopback S3 server, and its embedded local run's class raster."""
    root = tmp_path_factory.mktemp("s3scene")
    scene = write_geotiff(root / "scene.tif", structured_rgb(300, 420, seed=4))
    assert main(["run", str(scene), "--classes", CLASSES, "-o", str(root / "local"), *TINY]) == 0
    url = f"s3://{S3_BUCKET}/scenes/scene.tif"
    _fs().put_file(str(scene), url.removeprefix("s3://"))
    return url, root / "local" / "scene.classes.tif"


def test_scene_and_outputs_in_s3_give_the_local_runs_outputs(
        s3_scene: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``geogla run s3://.../scene.tif -o s3://.../out``: the store defaults to the output prefix,
    the set is uploaded whole (the STAC item's relative hrefs hold there), nothing is left locally."""
    url, reference = s3_scene
    monkeypatch.chdir(tmp_path)
    out = f"s3://{S3_BUCKET}/embedded/out"
    assert main(["run", url, "--classes", CLASSES, "-o", out, *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"cog: {out}/scene.classes.tif" in printed
    fs = _fs()
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{S3_BUCKET}/embedded/out", detail=False))
    assert names == ["scene.classes.qml", "scene.classes.tif", "scene.gpkg", "scene.stac.json", "scene.zarr"]
    _same_classes(f"{out}/scene.classes.tif", reference)
    item = json.loads(fs.cat_file(f"{S3_BUCKET}/embedded/out/scene.stac.json"))
    assert item["assets"]["classes"]["href"] == "./scene.classes.tif"
    assert item["properties"]["geogla:source"] == "scene.tif"
    assert list(tmp_path.iterdir()) == []  # no local folder, no store, no temporaries

    # absolute hrefs are the objects' URLs; the metrics of --labels are uploaded after the set
    labels = write_geotiff(tmp_path.parent / "labels.tif", np.zeros((300, 420), np.uint8))
    assert main(["run", url, "--classes", CLASSES, "-o", out, "--stac-hrefs", "absolute", "--labels",
                 str(labels), *TINY]) == 0
    metrics = json.loads(_fs().cat_file(f"{S3_BUCKET}/embedded/out/scene.metrics.json"))
    assert metrics["classes"] == CLASSES.split(",")
    item = json.loads(fs.cat_file(f"{S3_BUCKET}/embedded/out/scene.stac.json"))
    assert item["assets"]["polygons"]["href"] == f"{out}/scene.gpkg"
    assert {"rel": "self", "href": f"{out}/scene.stac.json", "type": "application/json"} in item["links"]

    # GDAL's own name of the object, as QGIS gives a remote layer's source
    vsi = url.replace("s3://", "/vsis3/")
    assert main(["run", vsi, "--classes", CLASSES, "-o", str(tmp_path.parent / "vsi"), *TINY]) == 0
    _same_classes(str(tmp_path.parent / "vsi" / "scene.classes.tif"), reference)
    assert main(["run", url, "--classes", CLASSES, "-o", "/vsis3/x/out", *TINY]) == 2
    assert "is a GDAL virtual file name" in capsys.readouterr().err


def test_an_object_storage_prefix_of_tiles_is_one_scene(
        s3_scene: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``geogla run s3://bucket/tiles/``: the rasters under the prefix, mosaicked, give the class
    raster of the image they were cut from."""
    from tests.test_mosaic import _tiles

    _, reference = s3_scene
    with rasterio.open(reference.parent.parent / "scene.tif") as ds:
        image = ds.read()
    fs = _fs()
    for tile in _tiles(tmp_path / "tiles", image):
        fs.put_file(str(tile), f"{S3_BUCKET}/tiles/{tile.name}")
    fs.pipe_file(f"{S3_BUCKET}/tiles/readme.txt", b"not a raster")
    out = tmp_path / "out"
    assert main(["run", f"s3://{S3_BUCKET}/tiles/", "--classes", CLASSES, "-o", str(out), *TINY]) == 0
    _same_classes(str(out / "tiles.classes.tif"), reference)
    capsys.readouterr()
    assert main(["run", f"s3://{S3_BUCKET}/scenes-none/", "--classes", CLASSES, "-o", str(tmp_path / "bad"),
                 *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scenes-none/" in err, err


def test_a_stac_item_in_object_storage_reads_its_asset_there(s3_scene: tuple[str, Path],
                                                            tmp_path: Path) -> None:
    """``geogla run s3://bucket/items/item.json``: the asset's relative href resolves to an
    ``s3://`` URL beside the item (``urljoin`` knows no ``s3://``)."""
    _, reference = s3_scene
    item: dict[str, object] = {
        "type": "Feature", "stac_version": "1.0.0", "id": "scene-item", "geometry": None,
        "properties": {"datetime": "2024-05-01T00:00:00Z"}, "links": [],
        "assets": {"visual": {"href": "../scenes/scene.tif", "type": "image/tiff"}}}
    _fs().pipe_file(f"{S3_BUCKET}/items/item.json", json.dumps(item).encode())
    out = tmp_path / "out"
    item_url = f"s3://{S3_BUCKET}/items/item.json"
    assert main(["run", item_url, "--classes", CLASSES, "-o", str(out), *TINY]) == 0
    _same_classes(str(out / "scene-item.classes.tif"), reference)
    produced = json.loads((out / "scene-item.stac.json").read_text())
    assert produced["properties"]["datetime"] == "2024-05-01T00:00:00Z"
    assert [link["href"] for link in produced["links"] if link["rel"] == "derived_from"] == [
        f"s3://{S3_BUCKET}/items/item.json"]


@pytest.mark.parametrize("case", ["object", "bucket", "out-bucket", "credentials"])
def test_bad_object_storage_input_exits_2_with_one_sentence(
        s3_scene: tuple[str, Path], case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = s3_scene
    scene, out = url, f"s3://{S3_BUCKET}/bad-{case}/out"
    expected = {"object": "was not found", "bucket": "bucket of the scene", "out-bucket": "does not exist",
                "credentials": "no AWS credentials were found"}[case]
    if case == "object":
        scene = f"s3://{S3_BUCKET}/scenes/missing.tif"
    elif case == "bucket":
        scene = "s3://no-such-bucket/scene.tif"
    elif case == "out-bucket":
        out = "s3://no-such-bucket/out"
    else:
        empty = tmp_path / "empty"
        empty.write_text("")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.chdir(tmp_path)
    assert main(["run", scene, "--classes", CLASSES, "-o", out, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert err.startswith("geogla: error: ") and err.endswith(".")
    monkeypatch.undo()  # the credentials back, to look
    assert not _fs().exists(f"{S3_BUCKET}/bad-{case}")
    assert {p.name for p in tmp_path.iterdir()} <= {"empty"}  # nothing written here either


# -- a cluster with no shared disk ---------------------------------------------------------------
@pytest.fixture(scope="module")
def isolated_workers(s3_endpoint: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Path]]]:
    """A scheduler and two worker processes, each started in a temporary folder of its own (its
    working directory, Dask's local directory and TMPDIR), none inside another."""
    scheduler = LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0")
    homes = [tmp_path_factory.mktemp(f"worker{k}") for k in range(2)]
    procs = []
    try:
        for home in homes:
            env = {**os.environ, "TMPDIR": str(home / "tmp")}
            (home / "tmp").mkdir()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", scheduler.scheduler_address,
                 "--nthreads", "1", "--no-nanny", "--local-directory", str(home / "dask"),
                 "--no-dashboard"], cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(scheduler.scheduler_address) as client:
            client.wait_for_workers(2, timeout=120)
        yield scheduler.scheduler_address, homes
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        scheduler.close()


@pytest.mark.slow
def test_cluster_without_a_shared_disk_reads_and_writes_object_storage_only(
        isolated_workers: tuple[str, list[Path]], s3_scene: tuple[str, Path], tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scene on S3, the store on S3, ``-o s3://``: each worker reads its own windows and the
    outputs are uploaded by the task that writes them; they equal the embedded local run's."""
    address, homes = isolated_workers
    url, reference = s3_scene
    monkeypatch.chdir(tmp_path)
    out, store = f"s3://{S3_BUCKET}/cluster/out", f"s3://{S3_BUCKET}/cluster/run.zarr"
    assert main(["run", url, "--classes", CLASSES, "-o", out, "--store", store, "--scheduler", address,
                 *TINY]) == 0
    _same_classes(f"{out}/scene.classes.tif", reference)
    scratch = tmp_path_factory.mktemp("fetched")
    _same_polygons(f"{out}/scene.gpkg", reference.with_name("scene.gpkg"), scratch)
    with Client(address) as client:
        places = client.run(lambda: (os.getcwd(), os.environ["TMPDIR"]))
        assert len(places) == 2
    cwds = sorted(cwd for cwd, _ in places.values())
    assert cwds == sorted(str(h) for h in homes)
    assert not cwds[0].startswith(cwds[1]) and not cwds[1].startswith(cwds[0])
    for home in homes:
        assert not any(p.suffix in (".tif", ".gpkg", ".json") for p in home.rglob("*")), list(home.rglob("*"))
    assert list(tmp_path.iterdir()) == []

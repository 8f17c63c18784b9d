"""STAC Items as scenes: ``geogla run item.json --asset visual`` (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from geogla.cli import main
from geogla.errors import SceneError
from geogla.stac_input import ItemAsset, choose_asset, resolve_href
from tests.conftest import structured_rgb, write_geotiff

TINY = ["--model", "tiny", "--weights", "random"]
WHEN = "2021-06-14T10:30:00Z"


def _item(path: Path, assets: dict[str, Any], item_id: str = "naip:m_4211_se 2021") -> Path:
    document: dict[str, Any] = {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": None,
                "properties": {"datetime": WHEN}, "links": [], "assets": assets}
    path.write_text(json.dumps(document))
    return path


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        classes: np.ndarray = ds.read(1)
    return classes


def test_resolve_href_against_the_item() -> None:
    assert resolve_href("/data/items/a.json", "../cogs/a.tif") == "/data/cogs/a.tif"
    assert resolve_href("/data/items/a.json", "./a.tif") == "/data/items/a.tif"
    assert resolve_href("https://h/c/items/a.json", "../cogs/a.tif") == "https://h/c/cogs/a.tif"
    assert resolve_href("https://h/items/a.json", "s3://b/a.tif") == "s3://b/a.tif"
    assert resolve_href("s3://bucket/items/a.json", "../cogs/a.tif") == "s3://bucket/cogs/a.tif"
    assert resolve_href("https://h/items/a.json", "/abs/a.tif") == "/abs/a.tif"


def test_the_asset_chosen() -> None:
    tif = {"href": "a.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
    thumb = {"href": "t.png", "type": "image/png"}
    meta = {"href": "m.xml", "type": "application/xml"}
    assert choose_asset("i", {"image": tif, "visual": tif}, None) == "visual"
    assert choose_asset("i", {"image": tif, "metadata": meta}, None) == "image"
    assert choose_asset("i", {"image": tif, "thumbnail": thumb}, "image") == "image"
    with pytest.raises(SceneError, match=r"Choose the asset .* --asset; its assets are: image, thumbnail"):
        choose_asset("i", {"image": tif, "thumbnail": thumb}, None)
    with pytest.raises(SceneError, match="has no asset 'nir'; its assets are: image"):
        choose_asset("i", {"image": tif}, "nir")


def test_item_ids_become_safe_file_names() -> None:
    assert ItemAsset("i", "naip:m_4211_se 2021", "visual", "a.tif").stem == "naip_m_4211_se_2021"
    assert ItemAsset("i", "..", "visual", "a.tif").stem == "item"


def test_a_stac_item_runs_its_asset_and_the_output_item_derives_from_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cogs, items = tmp_path / "cogs", tmp_path / "items"
    cogs.mkdir()
    items.mkdir()
    scene = write_geotiff(cogs / "scene.tif", structured_rgb(300, 420, seed=6))
    item = _item(items / "item.json", {"visual": {"href": "../cogs/scene.tif", "type": "image/tiff"},
                                      "thumbnail": {"href": "t.png", "type": "image/png"}})
    assert main(["run", str(scene), "--classes", "a,b", "-o", str(tmp_path / "direct"), *TINY]) == 0
    assert main(["run", str(item), "--classes", "a,b", "-o", str(tmp_path / "out"), *TINY]) == 0
    out = tmp_path / "out"
    np.testing.assert_array_equal(_classes(out / "naip_m_4211_se_2021.classes.tif"),
                                  _classes(tmp_path / "direct" / "scene.classes.tif"))
    produced = json.loads((out / "naip_m_4211_se_2021.stac.json").read_text())
    assert {"rel": "derived_from", "href": str(item), "type": "application/geo+json"} in produced["links"]
    assert produced["properties"]["geogla:source_item"] == "naip:m_4211_se 2021"
    assert produced["properties"]["geogla:source_asset"] == "visual"
    assert produced["properties"]["datetime"] == WHEN
    capsys.readouterr()
    bad = str(tmp_path / "bad")
    assert main(["run", str(item), "--asset", "nir", "--classes", "a", "-o", bad, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no asset 'nir'; its assets are: visual, thumbnail" in err, err
    assert main(["run", str(scene), "--asset", "visual", "--classes", "a", "-o", str(tmp_path / "bad"),
                 *TINY]) == 2
    assert "--asset picks an asset of a STAC item" in capsys.readouterr().err
    not_item = tmp_path / "x.json"
    not_item.write_text('{"type": "FeatureCollection", "features": []}')
    assert main(["run", str(not_item), "--classes", "a", "-o", str(tmp_path / "bad"), *TINY]) == 2
    assert "is not a STAC item" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.json"), "--classes", "a", "-o", str(tmp_path / "bad"),
                 *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_stac_item_by_url_reads_its_asset_by_url(tmp_path: Path) -> None:
    from tests.http_server import serving

    www = tmp_path / "www"
    (www / "items").mkdir(parents=True)
    write_geotiff(www / "scene.tif", structured_rgb(300, 420, seed=6))
    _item(www / "items" / "item.json", {"image": {"href": "../scene.tif", "type": "image/tiff"}}, "remote")
    with serving(www) as server:
        assert main(["run", f"{server.url}/items/item.json", "--classes", "a,b", "-o", str(tmp_path / "out"),
                     *TINY]) == 0
        assert server.served > 0
    produced = json.loads((tmp_path / "out" / "remote.stac.json").read_text())
    assert produced["properties"]["geogla:source_asset"] == "image"
    assert produced["properties"]["geogla:source"] == "scene.tif"
    assert [link["href"] for link in produced["links"] if link["rel"] == "derived_from"] == [
        f"{server.url}/items/item.json"]

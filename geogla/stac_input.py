"""A STAC Item as a scene: the raster of one of its assets, and what the outputs keep of the item.

``geogla run item.json --asset visual`` reads the Item (a local file or a URL), resolves the
asset's href against the Item's location, and runs on that raster; the output Item links back to
the input one (``derived_from``) and keeps its id and acquisition time.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from geogla.errors import ConfigError, SceneError, first_line
from geogla.paths import absolute, is_url

#: The asset chosen when ``--asset`` is not given and the Item has it (STAC's best practice name
#: for a true-colour image).
DEFAULT_ASSET = "visual"

#: Media types of assets geogla can run on.
RASTER_MEDIA_TYPES = ("image/tiff", "image/jp2", "image/png", "image/jpeg", "image/vnd.stac.geotiff")


@dataclass(frozen=True)
class ItemAsset:
    """One asset of a STAC Item: the Item's location (absolute path or URL) and id, the asset's
    key and its raster's location, and the Item's ``datetime`` (ISO 8601; None for a range)."""

    item_href: str
    item_id: str
    asset: str
    href: str
    datetime: str | None = None

    @property
    def stem(self) -> str:
        """The outputs' file name stem: the Item's id with characters other than letters, digits,
        ``.``, ``_`` and ``-`` replaced by ``_``."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.item_id).strip("._") or "item"

    def to_json(self) -> dict[str, Any]:
        return {"item_href": self.item_href, "item_id": self.item_id, "asset": self.asset, "href": self.href,
                "datetime": self.datetime}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ItemAsset:
        return cls(item_href=str(d["item_href"]), item_id=str(d["item_id"]), asset=str(d["asset"]),
                   href=str(d["href"]), datetime=d.get("datetime"))


def is_item_path(path: str) -> bool:
    """Whether ``path`` names a JSON document (``.json``, ``.geojson``), which geogla reads as a
    STAC Item (a raster is never JSON)."""
    name = urlsplit(path).path if is_url(path) else path
    return name.lower().endswith((".json", ".geojson"))


def read_item(path: str) -> dict[str, Any]:
    """The STAC Item at ``path`` (local or URL) as a dict; :class:`SceneError` when it cannot be
    read or is not an Item."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as fh:
            document = json.loads(fh.read())
    except FileNotFoundError:
        raise SceneError(f"The STAC item {path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise SceneError(f"The STAC item {path} cannot be read: {first_line(exc)}.") from None
    if not isinstance(document, dict) or document.get("type") != "Feature" \
            or not isinstance(document.get("assets"), dict):
        raise SceneError(f"{path} is not a STAC item (a GeoJSON Feature with assets).")
    return document


def _raster_assets(assets: dict[str, Any]) -> list[str]:
    def media_type(asset: Any) -> str:
        return str(asset.get("type", "")).split(";")[0].strip() if isinstance(asset, dict) else ""

    return [key for key, asset in assets.items() if media_type(asset) in RASTER_MEDIA_TYPES]


def choose_asset(path: str, assets: dict[str, Any], asset: str | None) -> str:
    """The key of the asset to run on: ``asset`` when given; else :data:`DEFAULT_ASSET` when the
    Item has it, else its only raster asset; :class:`SceneError` otherwise."""
    listed = ", ".join(assets) or "none"
    if asset is not None:
        if asset not in assets:
            raise SceneError(f"The STAC item {path} has no asset {asset!r}; its assets are: {listed}.")
        return asset
    if DEFAULT_ASSET in assets:
        return DEFAULT_ASSET
    rasters = _raster_assets(assets)
    if len(rasters) == 1:
        return rasters[0]
    raise SceneError(f"Choose the asset of the STAC item {path} to segment with --asset; its assets are: "
                     f"{listed}.")


def resolve_href(item_href: str, href: str) -> str:
    """``href`` (an asset's) as an absolute path or URL: as it is when absolute, else relative to
    the Item's folder."""
    if is_url(href) or href.startswith("/"):
        return href
    if is_url(item_href):  # by hand: urljoin knows http(s) but not s3:// or gs://
        parts = urlsplit(item_href)
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), href))
        return urlunsplit((parts.scheme, parts.netloc, joined, "", ""))
    return os.path.normpath(os.path.join(os.path.dirname(item_href), href))


def item_asset(path: str, asset: str | None = None) -> ItemAsset:
    """The asset ``asset`` of the STAC Item at ``path`` (see :func:`choose_asset`), resolved."""
    item_href = absolute(path)
    document = read_item(item_href)
    key = choose_asset(path, document["assets"], asset)
    href = document["assets"][key].get("href") if isinstance(document["assets"][key], dict) else None
    if not isinstance(href, str) or not href:
        raise SceneError(f"The asset {key!r} of the STAC item {path} has no href.")
    properties = document.get("properties")
    when = properties.get("datetime") if isinstance(properties, dict) else None
    return ItemAsset(item_href=item_href, item_id=str(document.get("id") or posixpath.basename(path)),
                     asset=key, href=resolve_href(item_href, href),
                     datetime=when if isinstance(when, str) else None)


def check_asset_option(asset: str | None, inputs: list[str]) -> None:
    """:class:`ConfigError` when ``--asset`` is given for a scene that is not one STAC item."""
    if asset is not None and not (len(inputs) == 1 and is_item_path(inputs[0])):
        raise ConfigError("--asset picks an asset of a STAC item, and the scene given is not one "
                          "(a .json file or URL).")

"""Georeferencing of a scene: CRS, affine transform and size, as one small value object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.crs import CRS


@dataclass(frozen=True)
class GeoRef:
    """Where a raster lies on the ground.

    ``crs_wkt`` is ``None`` for a file without a CRS (a drone JPEG, say): it then runs in pixel
    coordinates and ``transform`` is the identity.  ``transform`` maps (col, row) to (x, y) as in
    rasterio; it is kept as its six coefficients so that the object serialises to JSON.
    """

    width: int
    height: int
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def crs(self) -> CRS | None:
        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @classmethod
    def from_dataset(cls, dataset: Any) -> GeoRef:
        """Build from an open rasterio dataset."""
        crs = dataset.crs
        return cls(
            width=int(dataset.width),
            height=int(dataset.height),
            transform=tuple(dataset.transform)[:6],
            crs_wkt=crs.to_wkt() if crs else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "transform": list(self.transform),
                "crs_wkt": self.crs_wkt}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GeoRef:
        return cls(width=int(d["width"]), height=int(d["height"]),
                   transform=tuple(float(v) for v in d["transform"]),  # type: ignore[arg-type]
                   crs_wkt=d.get("crs_wkt"))

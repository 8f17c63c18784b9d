"""Georeferencing of a scene: CRS, affine transform and size, as one small value object."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affine import Affine
from pyproj import Geod
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

    @property
    def is_identity(self) -> bool:
        """True for GDAL's default transform of a file without georeferencing (x = col, y = row)."""
        return self.transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def pixel_size_metres(self) -> tuple[float, float]:
        """Ground size ``(row_height, col_width)`` of one pixel in metres, at the scene centre.

        Projected CRSs use their linear unit; geographic CRSs are measured along the geodesic at
        the scene's centre.  Raises :class:`ValueError` for a scene without a CRS.
        """
        crs = self.crs
        if crs is None:
            raise ValueError("a scene without a CRS has no ground resolution")
        t = self.affine
        col_step = math.hypot(t.a, t.d)
        row_step = math.hypot(t.b, t.e)
        if crs.is_geographic:
            geod = Geod(ellps="WGS84")
            cx, cy = t * (self.width / 2, self.height / 2)
            ex, ey = t * (self.width / 2 + 1, self.height / 2)
            sx, sy = t * (self.width / 2, self.height / 2 + 1)
            return (abs(geod.inv(cx, cy, sx, sy)[2]), abs(geod.inv(cx, cy, ex, ey)[2]))
        factor = crs.linear_units_factor[1]
        return (row_step * factor, col_step * factor)

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "transform": list(self.transform),
                "crs_wkt": self.crs_wkt}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GeoRef:
        return cls(width=int(d["width"]), height=int(d["height"]),
                   transform=tuple(float(v) for v in d["transform"]),  # type: ignore[arg-type]
                   crs_wkt=d.get("crs_wkt"))

"""Label legends: how the values of a benchmark's mask files become geogla class ids.

A mask file holds either class *ids* (one band, e.g. ISPRS 0..6 or LoveDA 0..7) or *colours*
(three bands, e.g. UAVid or the Dubai set).  A :class:`LabelLegend` maps each id or colour to the
index of a class in the dataset's class list, lists the values that mean "unlabelled", and decodes
a mask into a ``uint8`` class-id array where 255 marks pixels that are not scored.  Values that are
neither mapped nor listed as ignored are also set to 255, and counted, so that a wrong legend shows
up in the report instead of silently scoring garbage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geogla.classes import NODATA_CLASS
from geogla.errors import ConfigError

IGNORE = NODATA_CLASS  #: class id of pixels that are not scored (the metrics' ignore index)

RGB = tuple[int, int, int]

_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_colour(value: Any) -> RGB:
    """An RGB triple from ``"#RRGGBB"``, ``"RRGGBB"``, ``[r, g, b]`` or ``"r,g,b"``.

    Raises :class:`ConfigError` for anything else (components must lie in 0..255).
    """
    if isinstance(value, str):
        m = _HEX.match(value.strip())
        if m:
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f"{value!r} is not a colour; write it as \"#RRGGBB\" or [r, g, b].")
    try:
        rgb = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a colour; write it as \"#RRGGBB\" or [r, g, b].") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ConfigError(f"{value!r} is not a colour; write it as \"#RRGGBB\" or [r, g, b] with 0..255.")
    return (rgb[0], rgb[1], rgb[2])


def colour_hex(rgb: Sequence[int]) -> str:
    """``"#RRGGBB"`` of an RGB triple."""
    return "#{:02X}{:02X}{:02X}".format(*rgb)


_NO_COLOUR = 1 << 24  #: packed code of "no colour" (palette indices without an entry)


def _pack(rgb: RGB) -> int:
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def _unpack(code: int) -> RGB:
    return ((code >> 16) & 255, (code >> 8) & 255, code & 255)


@dataclass
class DecodeStats:
    """Counts of one or more decoded masks: pixels scored, ignored by the legend, and unmatched
    (a value the legend does not know; treated as ignored), with a few unmatched examples."""

    labelled: int = 0
    ignored: int = 0
    unmatched: int = 0
    examples: set[str] = field(default_factory=set)

    def merge(self, other: DecodeStats) -> None:
        self.labelled += other.labelled
        self.ignored += other.ignored
        self.unmatched += other.unmatched
        self.examples |= set(sorted(other.examples)[: max(0, 5 - len(self.examples))])

    @property
    def total(self) -> int:
        return self.labelled + self.ignored + self.unmatched


@dataclass(frozen=True)
class LabelLegend:
    """How mask values map to classes.

    Attributes:
        class_names: the classes labels can take, in class-id order (each class's first synonym).
        ids: single-band mask value -> class id.
        colours: RGB colour (packed ``r << 16 | g << 8 | b``) -> class id.
        ignore_ids, ignore_colours: values that mark unlabelled pixels (decoded to 255).
    """

    class_names: tuple[str, ...]
    ids: Mapping[int, int] = field(default_factory=dict)
    colours: Mapping[int, int] = field(default_factory=dict)
    ignore_ids: frozenset[int] = frozenset()
    ignore_colours: frozenset[int] = frozenset()

    @classmethod
    def from_yaml(cls, labels: Mapping[str, Any], class_names: Sequence[str], where: str) -> LabelLegend:
        """Build a legend from a ``labels:`` mapping of ``configs/datasets.yaml`` (or a legend file).

        ``labels`` has any of ``ids`` (``{value: class name}``), ``colours`` (``{"#RRGGBB": class
        name}``), ``ignore_ids`` and ``ignore_colours`` (lists).  Class names are matched
        case-insensitively against ``class_names``.  ``where`` names the preset in error messages.
        """
        known = {"ids", "colours", "ignore_ids", "ignore_colours"}
        unknown = sorted(set(labels) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) under labels: {', '.join(unknown)} "
                              f"(expected {', '.join(sorted(known))}).")
        lookup = {n.lower(): i for i, n in enumerate(class_names)}

        def class_of(name: Any, value: Any) -> int:
            key = str(name).strip().lower()
            if key not in lookup:
                raise ConfigError(
                    f"{where}: label value {value!r} names the class {name!r}, which is not one of "
                    f"{', '.join(class_names)}."
                )
            return lookup[key]

        ids: dict[int, int] = {}
        for value, name in (labels.get("ids") or {}).items():
            try:
                v = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: label id {value!r} is not an integer.") from None
            if not 0 <= v <= 65535:
                raise ConfigError(f"{where}: label id {v} is outside 0..65535.")
            ids[v] = class_of(name, value)
        colours = {_pack(parse_colour(value)): class_of(name, value)
                   for value, name in (labels.get("colours") or {}).items()}
        ignore_ids = frozenset(int(v) for v in labels.get("ignore_ids") or [])
        ignore_colours = frozenset(_pack(parse_colour(v)) for v in labels.get("ignore_colours") or [])
        if not ids and not colours:
            raise ConfigError(f"{where}: the labels give neither ids nor colours.")
        for clash in sorted(ignore_ids & set(ids)):
            raise ConfigError(f"{where}: label id {clash} is both a class and ignored.")
        for clash in sorted(ignore_colours & set(colours)):
            raise ConfigError(
                f"{where}: the colour {colour_hex(_unpack(clash))} is both a class and ignored."
            )
        return cls(tuple(class_names), ids, colours, ignore_ids, ignore_colours)

    def class_colours(self) -> dict[int, RGB]:
        """The first legend colour of each class that has one (for figures)."""
        out: dict[int, RGB] = {}
        for code, cls_id in self.colours.items():
            out.setdefault(cls_id, _unpack(code))
        return out

    def decode(self, mask: np.ndarray, palette: Mapping[int, Sequence[int]] | None = None
               ) -> tuple[np.ndarray, DecodeStats]:
        """Class ids ``(H, W)`` uint8 (255 = not scored) of a mask read as ``(bands, H, W)``.

        One band (or a grey band plus alpha) is decoded by ``ids``; three or more bands by
        ``colours`` (the first three bands; an RGB mask whose bands are all equal, a grey mask
        saved as RGB, falls back to ``ids`` when the legend has no colours).  A one-band mask
        with a ``palette`` (its colour table, index -> RGB(A)) may hold colours or ids: it is
        decoded both ways the legend allows and the way with fewer unknown values wins (ids on
        a tie), because datasets ship both kinds as palette PNGs.  Raises :class:`ConfigError`
        when the mask's kind has no table in the legend.
        """
        if mask.ndim == 2:
            mask = mask[None]
        bands = mask.shape[0]
        if bands < 3 and palette and self.colours:
            # Packed colour per palette index; indices without an entry get a code no colour has.
            lut = np.full(max(max(palette) + 1, int(mask[0].max(initial=0)) + 1), _NO_COLOUR, dtype=np.uint32)
            for index, colour in palette.items():
                lut[index] = _pack((int(colour[0]), int(colour[1]), int(colour[2])))
            by_colour = self._decode_codes(lut[mask[0]])
            if not self.ids:
                return by_colour
            by_id = self._decode_ids(mask[0])
            return by_colour if by_colour[1].unmatched < by_id[1].unmatched else by_id
        if bands >= 3 and self.colours:
            return self._decode_colours(mask[:3])
        if bands >= 3 and self.ids and np.array_equal(mask[0], mask[1]) and np.array_equal(mask[0], mask[2]):
            return self._decode_ids(mask[0])
        if bands < 3 and self.ids:
            return self._decode_ids(mask[0])
        kind = "RGB colour" if bands >= 3 else "single-band id"
        raise ConfigError(f"The masks are {kind} images but the legend gives no "
                          f"{'colours' if bands >= 3 else 'ids'}; add them under labels.")

    def _decode_ids(self, band: np.ndarray) -> tuple[np.ndarray, DecodeStats]:
        if not np.issubdtype(band.dtype, np.integer):
            band = band.astype(np.int64)
        top = max(int(band.max(initial=0)), max(self.ids, default=0), max(self.ignore_ids, default=0))
        if int(band.min(initial=0)) < 0:
            raise ConfigError("The masks hold negative label values.")
        # Lookup table: class id, IGNORE for ignored values, and a marker for unknown ones.
        unknown = 256
        lut = np.full(top + 1, unknown, dtype=np.uint16)
        for v in self.ignore_ids:
            lut[v] = IGNORE
        for v, c in self.ids.items():
            lut[v] = c
        out = lut[band]
        bad = out == unknown
        stats = DecodeStats()
        if bad.any():
            stats.unmatched = int(bad.sum())
            stats.examples = {str(int(v)) for v in np.unique(band[bad])[:5]}
            out[bad] = IGNORE
        stats.ignored = int((out == IGNORE).sum()) - stats.unmatched
        stats.labelled = int(out.size) - stats.ignored - stats.unmatched
        return out.astype(np.uint8), stats

    def _decode_colours(self, rgb: np.ndarray) -> tuple[np.ndarray, DecodeStats]:
        if rgb.dtype != np.uint8:
            raise ConfigError(f"Colour masks must be 8-bit, got {rgb.dtype}.")
        return self._decode_codes((rgb[0].astype(np.uint32) << 16) | (rgb[1].astype(np.uint32) << 8)
                                  | rgb[2].astype(np.uint32))

    def _decode_codes(self, codes: np.ndarray) -> tuple[np.ndarray, DecodeStats]:
        table = {**dict.fromkeys(self.ignore_colours, IGNORE), **self.colours}
        keys = np.array(sorted(table), dtype=np.uint32)
        vals = np.array([table[int(k)] for k in keys], dtype=np.uint8)
        pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
        hit = keys[pos] == codes
        out = np.where(hit, vals[pos], np.uint8(IGNORE)).astype(np.uint8)
        stats = DecodeStats()
        if not hit.all():
            stats.unmatched = int((~hit).sum())
            stats.examples = {
                colour_hex(_unpack(int(c))) if c != _NO_COLOUR else "a palette index without colour"
                for c in np.unique(codes[~hit])[:5]
            }
        stats.ignored = int((out == IGNORE).sum()) - stats.unmatched
        stats.labelled = int(out.size) - stats.ignored - stats.unmatched
        return out, stats

"""The class list a user asks for: names, synonyms, colours and the background rule.

A class list is written ``"building,tree|forest,road"``: classes are separated by commas, the
synonyms of one class by ``|``.  Each synonym is a separate text prompt; a class's probability is
the maximum over its synonyms' probabilities (docs/method.md section 2).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field

from geogla.errors import ClassSpecError

NODATA_CLASS = 255  #: class id of nodata pixels in the class raster
MAX_CLASSES = 255  #: ids 0..254 are classes; 255 is nodata

# Colours users expect for common land-cover names (RGB).  Others get a stable colour from their name.
_KNOWN_COLOURS: dict[str, tuple[int, int, int]] = {
    "building": (220, 40, 40), "roof": (220, 40, 40), "house": (220, 40, 40),
    "road": (128, 128, 128), "pavement": (170, 170, 170), "impervious surface": (200, 200, 200),
    "tree": (20, 110, 30), "forest": (20, 110, 30), "low vegetation": (130, 200, 80),
    "vegetation": (80, 170, 60), "grass": (150, 220, 100), "cropland": (230, 200, 90),
    "agricultural": (230, 200, 90), "water": (40, 100, 220), "river": (40, 100, 220),
    "car": (250, 200, 0), "vehicle": (250, 200, 0), "bareland": (180, 140, 100),
    "barren": (180, 140, 100), "background": (0, 0, 0), "clutter": (255, 0, 255),
    "facade": (200, 120, 60), "human": (255, 120, 200),
}


def _colour_for(name: str) -> tuple[int, int, int]:
    if name in _KNOWN_COLOURS:
        return _KNOWN_COLOURS[name]
    digest = hashlib.sha256(name.encode()).digest()
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)


@dataclass(frozen=True)
class ClassList:
    """An ordered list of classes; class id ``i`` is ``names[i]``.

    ``synonyms[i]`` are the text prompts of class ``i`` (empty for a background class that is only
    assigned by the probability threshold).  ``background`` is the id of the background class or
    ``None``; pixels whose top class probability is below ``prob_threshold`` get it.
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    colours: tuple[tuple[int, int, int], ...]
    background: int | None = None
    prob_threshold: float = 0.0
    prompts: tuple[str, ...] = field(init=False)
    prompt_class: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        prompts = [s for syns in self.synonyms for s in syns]
        owners = [i for i, syns in enumerate(self.synonyms) for _ in syns]
        object.__setattr__(self, "prompts", tuple(prompts))
        object.__setattr__(self, "prompt_class", tuple(owners))

    def __len__(self) -> int:
        return len(self.names)

    def to_json(self) -> dict[str, object]:
        return {"names": list(self.names), "synonyms": [list(s) for s in self.synonyms],
                "colours": [list(c) for c in self.colours], "background": self.background,
                "prob_threshold": self.prob_threshold}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ClassList:
        return cls(names=tuple(d["names"]),  # type: ignore[arg-type]
                   synonyms=tuple(tuple(s) for s in d["synonyms"]),  # type: ignore[attr-defined]
                   colours=tuple(tuple(c) for c in d["colours"]),  # type: ignore[attr-defined]
                   background=d.get("background"),  # type: ignore[arg-type]
                   prob_threshold=float(d.get("prob_threshold", 0.0)))  # type: ignore[arg-type]


def parse_classes(spec: str, background: str | None = None, prob_threshold: float = 0.0) -> ClassList:
    """Parse ``"building,tree|forest,road"`` into a :class:`ClassList`.

    A class is named by its first synonym.  ``background`` names the class given to pixels whose
    top probability is below ``prob_threshold``: one of the listed classes, or a new class appended
    at the end with no prompt of its own.  A threshold above 0 without a background appends a class
    named ``background``.  Raises :class:`ClassSpecError` for an empty list, an empty name, a
    class (or synonym) given twice, a control character (or an unpaired surrogate) in a name, or a
    backslash before a comma (a comma always separates classes; there is no escape).
    """
    if not 0.0 <= prob_threshold <= 1.0:
        raise ClassSpecError(f"--prob-threshold must lie between 0 and 1, got {prob_threshold}.")
    if not spec or not spec.strip():
        raise ClassSpecError("The class list is empty: give classes such as --classes building,tree,road.")
    if "\\," in spec:
        raise ClassSpecError(f"The class list {spec!r} has a backslash before a comma: commas always "
                             "separate classes and cannot be escaped, so name the class without one.")
    synonyms: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for item in spec.split(","):
        syns = tuple(s.strip() for s in item.split("|"))
        if any(not s for s in syns):
            raise ClassSpecError(f"The class list {spec!r} has an empty class name.")
        unwritable = [s for s in syns if any(unicodedata.category(c) in ("Cc", "Cs") for c in s)]
        if unwritable:
            raise ClassSpecError(f"The class name {unwritable[0]!r} holds a control character; "
                                 "name it with printable characters.")
        for s in syns:
            if s.lower() in seen:
                raise ClassSpecError(f"The class {s!r} is given twice in the class list.")
            seen.add(s.lower())
        synonyms.append(syns)
    names = [syns[0] for syns in synonyms]
    bg_id: int | None = None
    if background is not None and not background.strip():
        raise ClassSpecError("The background class name is empty.")
    if background is None and prob_threshold > 0:
        background = "background"
    if background is not None:
        background = background.strip()
        matches = [i for i, syns in enumerate(synonyms) if background.lower() in (s.lower() for s in syns)]
        if matches:
            bg_id = matches[0]
        else:
            names.append(background)
            synonyms.append(())
            bg_id = len(names) - 1
    if len(names) > MAX_CLASSES:
        raise ClassSpecError(f"At most {MAX_CLASSES} classes are supported, got {len(names)}.")
    return ClassList(names=tuple(names), synonyms=tuple(synonyms),
                     colours=tuple(_colour_for(n.lower()) for n in names),
                     background=bg_id, prob_threshold=float(prob_threshold))

"""Finding the image / mask pairs of a benchmark in the folder layouts users download.

Every reader takes the dataset root and a split and returns :class:`Sample` objects sorted by
name; masks are matched to images by file stem.  Each reader accepts the dataset's official
download layout, the ``img_dir/<split>`` + ``ann_dir/<split>`` layout that mmsegmentation's (and
SegEarth-OV's) converters write, and a flat ``images/`` + ``masks/`` folder (how the samples in
``../shared/data`` are stored; the split is then the folder itself).  The layouts of UAVid, VDD,
UDD5 and OpenEarthMap are written from their documentation (no sample of them was at hand); the
assumptions are in each reader's docstring.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from geogla.datasets.legend import DecodeStats, LabelLegend
from geogla.env import gdal_env
from geogla.errors import UserInputError
from geogla.scene import open_raster

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")
#: Suffixes a mask's stem may carry beyond its image's stem (generic folders).
MASK_SUFFIXES = ("", "_mask", "_label", "_labels", "_gt")


class DatasetError(UserInputError):
    """The dataset root is missing, holds no images for the split, or has images without masks."""


@dataclass(frozen=True)
class Sample:
    """One evaluated image: its name, image and mask files, and an optional tile of both.

    ``box`` ``(y1, x1, y2, x2)`` is the part of the image and mask evaluated (UAVid frames are cut
    into tiles); ``None`` is the whole file.
    """

    name: str
    image: Path
    mask: Path
    box: tuple[int, int, int, int] | None = None


def _files(folder: Path, exts: Sequence[str], recursive: bool = False) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def pair_folder(images: Path, masks: Path, prefix: str = "", recursive: bool = False) -> list[Sample]:
    """Samples of every image in ``images`` with the mask of the same stem in ``masks``.

    A mask may carry one of :data:`MASK_SUFFIXES` after the stem.  With ``recursive``, sub-folders
    are searched and mirrored (``images/a/x.png`` pairs with ``masks/a/x.png``).  Raises
    :class:`DatasetError` when an image has no mask.
    """
    by_key: dict[tuple[str, str], Path] = {}
    for m in _files(masks, MASK_EXTS, recursive):
        rel = m.relative_to(masks).parent.as_posix()
        by_key.setdefault((rel, m.stem), m)
    samples, missing = [], []
    for img in _files(images, IMAGE_EXTS, recursive):
        rel = img.relative_to(images).parent.as_posix()
        mask = next(
            (by_key[(rel, img.stem + s)] for s in MASK_SUFFIXES if (rel, img.stem + s) in by_key), None
        )
        if mask is None:
            missing.append(img)
            continue
        name = f"{prefix}{'' if rel == '.' else rel + '/'}{img.stem}"
        samples.append(Sample(name, img, mask))
    if missing:
        raise DatasetError(f"{len(missing)} image(s) in {images} have no mask in {masks} "
                           f"(first: {missing[0].name}); is this split labelled?")
    return samples


def _first_existing(candidates: Iterable[tuple[Path, Path]]) -> tuple[Path, Path] | None:
    return next(((i, m) for i, m in candidates if i.is_dir() and m.is_dir()), None)


def _mmseg_or_flat(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Candidate (images, masks) folders shared by every layout: mmseg's converted layout, then a
    flat images/ + masks/ folder (at the root or inside a split folder)."""
    return [
        (root / "img_dir" / split, root / "ann_dir" / split),
        (root / split / "images", root / split / "masks"),
        (root / "images", root / "masks"),
    ]


def _simple(root: Path, split: str, candidates: list[tuple[Path, Path]], layout: str) -> list[Sample]:
    found = _first_existing(candidates)
    if found is None:
        tried = ", ".join(f"{os.path.relpath(i, root)} + {os.path.relpath(m, root)}" for i, m in candidates)
        raise DatasetError(f"No {layout} images for split {split!r} under {root}: looked for {tried}.")
    return pair_folder(*found)


def read_isprs(root: Path, split: str) -> list[Sample]:
    """ISPRS Vaihingen / Potsdam as converted to 512 x 512 tiles by mmsegmentation's
    ``tools/dataset_converters/{vaihingen,potsdam}.py``: ``img_dir/<split>/*.png`` and
    ``ann_dir/<split>/*.png`` (ids 0..6, 0 = ignore), or a flat ``images/`` + ``masks/`` folder."""
    return _simple(root, split, _mmseg_or_flat(root, split), "ISPRS")


def read_loveda(root: Path, split: str) -> list[Sample]:
    """LoveDA: the official zips (``Train/``, ``Val/``, ``Test/``, each with ``Urban/`` and ``Rural/``
    holding ``images_png/`` and ``masks_png/``; both domains are evaluated, names ``Urban/1366``),
    the same with ``root`` already the split folder, mmseg's ``img_dir/<split>`` + ``ann_dir/<split>``,
    or a flat ``images/`` + ``masks/``.  The test split has no public masks."""
    for split_dir in (root / split.capitalize(), root / split, root):
        domains = [d for d in ("Urban", "Rural") if (split_dir / d / "images_png").is_dir()]
        if domains:
            samples: list[Sample] = []
            for d in domains:
                masks = split_dir / d / "masks_png"
                if not masks.is_dir():
                    raise DatasetError(
                        f"{split_dir / d} has images_png but no masks_png; is this split labelled?"
                    )
                samples += pair_folder(split_dir / d / "images_png", masks, prefix=f"{d}/")
            return samples
    return _simple(root, split, _mmseg_or_flat(root, split), "LoveDA")


def read_uavid(root: Path, split: str) -> list[Sample]:
    """UAVid: the official release (``uavid_<split>/seqN/Images/*.png`` with colour masks in
    ``seqN/Labels/*.png``; SegEarth-OV's converter reads test labels from ``test_gt/seqN/...``, so
    ``<split>_gt/`` and ``<split>/`` are accepted too; names ``seqN/000000``), mmseg's converted
    ``img_dir/<split>`` + ``ann_dir/<split>`` (ids 0..6, the two car classes merged), or a flat
    ``images/`` + ``masks/``.  Whole frames are cut into tiles by the preset's ``protocol.tile``.
    The public release has no test labels: they come from the UAVid authors."""
    for split_dir in (root / f"uavid_{split}", root / f"{split}_gt", root / split, root):
        seqs = (
            sorted(d for d in split_dir.glob("seq*") if (d / "Images").is_dir()) if split_dir.is_dir() else []
        )
        if seqs:
            samples: list[Sample] = []
            for seq in seqs:
                if not (seq / "Labels").is_dir():
                    raise DatasetError(f"{seq} has Images but no Labels; is this split labelled?")
                samples += pair_folder(seq / "Images", seq / "Labels", prefix=f"{seq.name}/")
            return samples
    return _simple(root, split, _mmseg_or_flat(root, split), "UAVid")


def read_vdd(root: Path, split: str) -> list[Sample]:
    """VDD (Varied Drone Dataset) as downloaded: ``<split>/src/*.JPG`` with masks in
    ``<split>/gt/*.png`` (class ids 0..6: other, wall, road, vegetation, vehicle, roof, water;
    colour masks are decoded with the preset's colours), also when ``root`` is the split folder
    (``src/`` + ``gt/``), or mmseg's / the flat layout."""
    candidates = [
        (root / split / "src", root / split / "gt"),
        (root / "VDD" / split / "src", root / "VDD" / split / "gt"),
        (root / "src", root / "gt"),
        *_mmseg_or_flat(root, split),
    ]
    return _simple(root, split, candidates, "VDD")


def read_udd(root: Path, split: str) -> list[Sample]:
    """UDD5 (Urban Drone Dataset) as downloaded: ``<split>/src/*.JPG`` with masks in
    ``<split>/gt/*.png`` (ids 0..4: vegetation, building, road, vehicle, other), also below a
    ``UDD5/`` or ``UDD/UDD5/`` folder (SegEarth-OV's paths) or with ``root`` the split folder; or
    mmseg's / the flat layout.  UDD5 has train and val splits only."""
    candidates = [(root / split / "src", root / split / "gt"),
                  (root / "UDD5" / split / "src", root / "UDD5" / split / "gt"),
                  (root / "UDD" / "UDD5" / split / "src", root / "UDD" / "UDD5" / split / "gt"),
                  (root / "src", root / "gt"), *_mmseg_or_flat(root, split)]
    return _simple(root, split, candidates, "UDD5")


def read_openearthmap(root: Path, split: str) -> list[Sample]:
    """OpenEarthMap as downloaded (``OpenEarthMap_wo_xBD``): one folder per region with
    ``images/<region>_<n>.tif`` and ``labels/<region>_<n>.tif`` (ids 0..8), and ``<split>.txt`` at
    the root listing the split's file names (as SegEarth-OV's converter reads it; names
    ``<region>/<stem>``); or mmseg's ``img_dir/<split>`` + ``ann_dir/<split>``, or flat.  The test
    split's labels are not public."""
    listing = root / f"{split}.txt"
    if listing.is_file():
        wanted = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        index = {p.name: p for p in root.glob("*/images/*") if p.suffix.lower() in IMAGE_EXTS}
        samples, missing = [], []
        for fname in wanted:
            img = index.get(fname) or index.get(Path(fname).name)
            if img is None:
                missing.append(fname)
                continue
            mask = img.parent.parent / "labels" / img.name
            if not mask.is_file():
                raise DatasetError(f"{img} has no label {mask}; is this split labelled?")
            samples.append(Sample(f"{img.parent.parent.name}/{img.stem}", img, mask))
        if missing:
            raise DatasetError(f"{len(missing)} file(s) listed in {listing} are not under {root}/*/images "
                               f"(first: {missing[0]}).")
        return samples
    return _simple(root, split, _mmseg_or_flat(root, split), "OpenEarthMap")


def read_folder(root: Path, split: str) -> list[Sample]:
    """A generic folder: ``images/`` and ``masks/`` (or ``<split>/images`` + ``<split>/masks``),
    sub-folders mirrored, masks matched by stem (optionally with ``_mask``, ``_label``, ``_gt``)."""
    for images, masks in (
        (root / split / "images", root / split / "masks"),
        (root / "images", root / "masks"),
    ):
        if images.is_dir() and masks.is_dir():
            return pair_folder(images, masks, recursive=True)
    raise DatasetError(f"No images/ and masks/ folders under {root} (or {root / split}).")


LAYOUTS: dict[str, Callable[[Path, str], list[Sample]]] = {
    "isprs": read_isprs, "loveda": read_loveda, "uavid": read_uavid, "vdd": read_vdd, "udd": read_udd,
    "openearthmap": read_openearthmap, "folder": read_folder,
}


def find_samples(layout: str, root: str | os.PathLike[str], split: str) -> list[Sample]:
    """The samples of ``split`` under ``root`` in ``layout`` (a key of :data:`LAYOUTS`), sorted by name.

    Raises :class:`DatasetError` for a missing root, an unknown layout or a split without images.
    """
    path = Path(root)
    if not path.is_dir():
        raise DatasetError(f"The dataset root {path} does not exist or is not a folder.")
    if layout not in LAYOUTS:
        raise DatasetError(f"Unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}.")
    samples = sorted(LAYOUTS[layout](path, split), key=lambda s: s.name)
    if not samples:
        raise DatasetError(f"No images for split {split!r} under {path}.")
    return samples


def tile_starts(size: int, tile: int) -> list[int]:
    """Tile origins along one axis: every ``tile`` pixels, the last shifted back to end on the edge
    (SegEarth-OV's UAVid converter, no overlap); one tile of the whole side when it is shorter."""
    if size <= tile:
        return [0]
    return sorted({min(s, size - tile) for s in range(0, size, tile)})


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a raster file, from its header."""
    with gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as ds:
                return int(ds.height), int(ds.width)
        except RasterioIOError as exc:
            raise DatasetError(f"The image {path} cannot be opened: {str(exc).splitlines()[0]}.") from None


def expand_tiles(samples: Sequence[Sample], tile: tuple[int, int] | None) -> list[Sample]:
    """Cut every sample larger than ``tile`` ``(height, width)`` into tiles (names get
    ``_<y1>_<y2>_<x1>_<x2>`` as SegEarth-OV's converter names them); others are kept whole."""
    if tile is None:
        return list(samples)
    out: list[Sample] = []
    th, tw = tile
    for s in samples:
        h, w = image_size(s.image)
        if h <= th and w <= tw:
            out.append(s)
            continue
        for y in tile_starts(h, th):
            for x in tile_starts(w, tw):
                y2, x2 = min(y + th, h), min(x + tw, w)
                out.append(replace(s, name=f"{s.name}_{y}_{y2}_{x}_{x2}", box=(y, x, y2, x2)))
    return out


def read_mask(path: Path, box: tuple[int, int, int, int] | None = None
              ) -> tuple[np.ndarray, dict[int, tuple[int, ...]] | None]:
    """The bands of a mask file as ``(bands, H, W)``, all of it or tile ``box`` ``(y1, x1, y2, x2)``,
    and its colour table when it is a palette image (its values are then the palette indices)."""
    with gdal_env(), open_raster(str(path), what="mask") as ds:
        window = None if box is None else Window(box[1], box[0], box[3] - box[1], box[2] - box[0])
        data = np.asarray(ds.read(window=window))
        palette = None
        if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
            palette = {int(k): tuple(int(c) for c in v) for k, v in ds.colormap(1).items()}
        return data, palette


def load_labels(sample: Sample, legend: LabelLegend) -> tuple[np.ndarray, DecodeStats]:
    """The sample's class ids ``(H, W)`` uint8 (255 = not scored), of its tile when it has one."""
    data, palette = read_mask(sample.mask, sample.box)
    return legend.decode(data, palette)

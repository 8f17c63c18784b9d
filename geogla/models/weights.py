"""Where model weights come from, and the one sentence that says how to provide them.

Each encoder's weights are looked up in this order:

1. an explicit file (``--clip-weights PATH`` / ``--vfm-weights PATH``);
2. ``$GEOGLA_WEIGHTS_DIR``, laid out as::

       $GEOGLA_WEIGHTS_DIR/clip/<open_clip arch>-<pretrained tag>.<ext>  (clip/ViT-B-16-openai.safetensors)
       $GEOGLA_WEIGHTS_DIR/vfm/<timm name with tag>.<ext>  (vfm/vit_base_patch8_224.dino.safetensors)

   with ``<ext>`` one of ``safetensors``, ``bin``, ``pt``, ``pth`` (tried in that order); the files
   are the ones open_clip and timm themselves download (or the original OpenAI / DINO releases);
3. the libraries' own caches: the Hugging Face hub cache that open_clip and timm download into
   (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), and for weights published only at a
   URL, open_clip's ``~/.cache/clip`` and torch hub's ``checkpoints`` folder;
4. a download into those caches, unless ``HF_HUB_OFFLINE`` is set.

Nothing here builds a model: the functions return file paths, and :func:`missing_weights_message`
writes the error when none is found.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from geogla.errors import ConfigError, WeightsError
from geogla.models.registry import ClipSpec, ModelPreset, VfmSpec

WEIGHTS_DIR_ENV = "GEOGLA_WEIGHTS_DIR"  #: environment variable of the local weights folder
WEIGHT_EXTENSIONS = ("safetensors", "bin", "pt", "pth")  #: tried in this order

# Origins a resolved file can have (recorded in run metadata and printed by `geogla models`).
EXPLICIT = "explicit path"
WEIGHTS_DIR = WEIGHTS_DIR_ENV
LIBRARY_CACHE = "library cache"
RANDOM = "random"


class RandomWeightsWarning(UserWarning):
    """Emitted when an encoder runs with random weights: its labels are meaningless."""


@dataclass(frozen=True)
class WeightsSource:
    """Where one encoder's weights come from: a file and how it was found, or random init."""

    origin: str  # EXPLICIT, WEIGHTS_DIR, LIBRARY_CACHE or RANDOM
    path: Path | None = None

    def __str__(self) -> str:
        return "random weights" if self.path is None else f"{self.path} ({self.origin})"


# --------------------------------------------------------------------------------------------
# helpers


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``).

    The environment is read at call time; huggingface_hub itself reads it once at import.
    """
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any(f is not None and f.upper() in {"1", "ON", "YES", "TRUE"}
                                                for f in flags)


@lru_cache(maxsize=4)
def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Asked once per host and process, so that a machine with no route to the hub answers at once
    instead of going through huggingface_hub's retries for every file.
    """
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def can_download(url: str) -> bool:
    """True when downloads are allowed (:func:`offline` is False) and ``url``'s host answers."""
    return not offline() and _reachable(url)


def weights_dir() -> Path | None:
    """The folder named by ``$GEOGLA_WEIGHTS_DIR``, or None when unset; a non-folder raises WeightsError."""
    value = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise WeightsError(f"{WEIGHTS_DIR_ENV}={value} is not a folder; point it at a folder with "
                           "clip/ and vfm/ subfolders or unset it.")
    return path


def _explicit(path: str | os.PathLike[str], option: str) -> WeightsSource:
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"The weights file {file} given with {option} does not exist.")
    return WeightsSource(EXPLICIT, file)


def _in_weights_dir(subdir: str, stem: str) -> WeightsSource | None:
    root = weights_dir()
    if root is None:
        return None
    for ext in WEIGHT_EXTENSIONS:
        file = root / subdir / f"{stem}.{ext}"
        if file.is_file():
            return WeightsSource(WEIGHTS_DIR, file)
    return None


def _hub_file(repo: str, filenames: list[str], download: bool) -> Path | None:
    """First of ``filenames`` in hub repo ``repo`` found in the HF cache (or downloaded when allowed)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    for filename in filenames:
        if not download or not can_download(constants.ENDPOINT):
            # Cache only: no network call at all, so offline lookups answer at once.
            cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(cached, str):
                return Path(cached)
            continue
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None))
        except EntryNotFoundError:
            continue  # that file name is not in the repository: try the next one
        except OSError:
            # Network or hub failure (HfHubHTTPError, OfflineModeIsEnabled, connection errors all
            # derive from OSError): the cache was already consulted by hf_hub_download.
            return None
    return None


def _url_file(url: str, cache_dir: Path, download: bool, filename: str | None = None) -> Path | None:
    """``url``'s file (or ``filename``) in ``cache_dir``, downloaded there when allowed and online."""
    file = cache_dir / (filename or os.path.basename(url.split("?")[0]))
    if file.is_file():
        return file
    if not download or not can_download(url):
        return None
    import torch.hub

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(file), progress=False)
    except OSError:  # URLError and socket errors derive from OSError
        return None
    return file


def _safe_first(filename: str) -> list[str]:
    """The file names open_clip / timm try for ``filename``: a safetensors twin first."""
    stem, dot, ext = filename.rpartition(".")
    if dot and ext in {"bin", "pth", "pt"}:
        return [f"{stem}.safetensors", filename]
    return [filename]


# --------------------------------------------------------------------------------------------
# per encoder


def clip_library_file(spec: ClipSpec, download: bool) -> Path | None:
    """The file open_clip would load for ``spec``'s pretrained tag, from its caches or a download."""
    if spec.pretrained is None:
        return None
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        return None  # open_clip does not know this tag: only a local file can provide it
    hub = str(cfg.get("hf_hub") or "")
    if hub:
        # open_clip's convention: 'org/repo/' means its default file names, 'org/repo/file' one file.
        if hub.endswith("/"):
            repo, filename = hub[:-1], ""
        else:
            repo, _, filename = hub.rpartition("/")
        names = (_safe_first(filename) if filename
                 else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
        return _hub_file(repo, names, download)
    url = str(cfg.get("url") or "")
    if url:
        return _url_file(url, Path("~/.cache/clip").expanduser(), download)
    return None


def vfm_library_file(spec: VfmSpec, download: bool) -> Path | None:
    """The file timm would load for ``spec``'s pretrained tag, from its caches or a download."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(spec.name)
    if cfg is None:
        return None  # no published weights under that name: only a local file can provide them
    if cfg.hf_hub_id:
        names = (_safe_first(cfg.hf_hub_filename) if cfg.hf_hub_filename
                 else ["model.safetensors", "pytorch_model.bin"])
        return _hub_file(cfg.hf_hub_id, names, download)
    if cfg.url:
        import torch.hub

        # timm allows (url, file name) pairs.
        url, filename = cfg.url if isinstance(cfg.url, tuple) else (cfg.url, None)
        return _url_file(url, Path(torch.hub.get_dir()) / "checkpoints", download, filename)
    return None


def library_source(spec: ClipSpec | VfmSpec) -> str | None:
    """Where open_clip / timm would download ``spec``'s weights from: a Hugging Face hub repository
    (``hf-hub:org/name``) or a URL; None when the library publishes none under that name."""
    if isinstance(spec, ClipSpec):
        if spec.pretrained is None:
            return None
        from open_clip.pretrained import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.arch, spec.pretrained) or {}
        hub = str(cfg.get("hf_hub") or "").rstrip("/")
        url = str(cfg.get("url") or "")
    else:
        import timm.models

        tcfg = timm.models.get_pretrained_cfg(spec.name)
        if tcfg is None:
            return None
        hub = tcfg.hf_hub_id or ""
        url = tcfg.url[0] if isinstance(tcfg.url, tuple) else (tcfg.url or "")
    if hub:
        return f"hf-hub:{hub}"
    return url or None


def resolve_clip(spec: ClipSpec, explicit: str | os.PathLike[str] | None,
                 download: bool = True) -> WeightsSource | None:
    """Find the CLIP weights of ``spec``; None when no source has them."""
    if explicit is not None:
        return _explicit(explicit, "--clip-weights")
    found = _in_weights_dir("clip", spec.file_stem) if spec.pretrained else None
    if found is not None:
        return found
    file = clip_library_file(spec, download)
    return WeightsSource(LIBRARY_CACHE, file) if file is not None else None


def resolve_vfm(spec: VfmSpec, explicit: str | os.PathLike[str] | None,
                download: bool = True) -> WeightsSource | None:
    """Find the VFM weights of ``spec``; None when no source has them."""
    if explicit is not None:
        return _explicit(explicit, "--vfm-weights")
    found = _in_weights_dir("vfm", spec.file_stem)
    if found is not None:
        return found
    file = vfm_library_file(spec, download)
    return WeightsSource(LIBRARY_CACHE, file) if file is not None else None


def _dir_hint(subdir: str, stem: str) -> str:
    return f"$GEOGLA_WEIGHTS_DIR/{subdir}/{stem}.safetensors"


def missing_weights_message(missing: list[ClipSpec | VfmSpec]) -> str:
    """One sentence naming the encoders without weights and every way to provide them."""
    labels, options, files = [], [], []
    for spec in missing:
        if isinstance(spec, ClipSpec):
            labels.append(spec.label)
            options.append("--clip-weights PATH")
            files.append(_dir_hint("clip", spec.file_stem))
        else:
            labels.append(spec.label)
            options.append("--vfm-weights PATH")
            files.append(_dir_hint("vfm", spec.file_stem))
    where = "offline (HF_HUB_OFFLINE is set)" if offline() else "locally or for download"
    plural = len(missing) > 1
    return (f"No weights for {' and '.join(labels)} {'were' if plural else 'was'} found {where}; "
            f"pass {' and '.join(options)}, put the file{'s' if plural else ''} at {' and '.join(files)}, "
            "or run once with network access; use --weights random to run without weights.")


def describe_weights(preset: ModelPreset, clip_weights: str | os.PathLike[str] | None = None,
                     vfm_weights: str | os.PathLike[str] | None = None) -> str:
    """Say, one line per encoder, where ``preset``'s weights would be loaded from, without downloading.

    An encoder without weights gets the sentence that says how to provide them.
    """
    lines = [f"preset '{preset.name}': {preset.description}"]
    pairs: list[tuple[ClipSpec | VfmSpec, WeightsSource | None]] = []
    try:
        pairs.append((preset.clip, resolve_clip(preset.clip, clip_weights, download=False)))
        if preset.vfm is not None:
            pairs.append((preset.vfm, resolve_vfm(preset.vfm, vfm_weights, download=False)))
    except WeightsError as exc:  # a missing explicit path or a bad GEOGLA_WEIGHTS_DIR
        return "\n".join([*lines, f"  {exc}"])
    for spec, source in pairs:
        if source is not None:
            lines.append(f"  {spec.label}: {source}")
        elif preset.random_only:
            lines.append(f"  {spec.label}: no published weights (test preset; use --weights random)")
        else:
            lines.append(f"  {spec.label}: {missing_weights_message([spec])}")
    if preset.vfm is None:
        lines.append("  no VFM: the keys are CLIP's own last-block queries")
    return "\n".join(lines)


def find_weights(preset: ModelPreset, weights: str, clip_weights: str | os.PathLike[str] | None = None,
                 vfm_weights: str | os.PathLike[str] | None = None,
                 ) -> tuple[WeightsSource | None, WeightsSource | None]:
    """The weight files of ``preset``'s CLIP and VFM (None: random, or no VFM), without torch.

    ``weights="pretrained"`` looks each encoder up (explicit path, ``$GEOGLA_WEIGHTS_DIR``, the
    libraries' caches, a download unless offline); ``"random"`` loads only explicit paths.

    Raises:
        ConfigError: ``weights`` is neither, ``vfm_weights`` for a preset without VFM, or
            pretrained weights of a preset that has none.
        WeightsError: pretrained weights are missing (one sentence naming all of them and how to
            provide them).
    """
    if weights not in ("pretrained", "random"):
        raise ConfigError(f"weights must be 'pretrained' or 'random', not {weights!r}.")
    if preset.vfm is None and vfm_weights is not None:
        raise ConfigError(f"Preset '{preset.name}' has no VFM (its keys come from CLIP); drop --vfm-weights.")
    explicit_all = clip_weights is not None and (vfm_weights is not None or preset.vfm is None)
    if weights == "pretrained" and preset.random_only and not explicit_all:
        raise ConfigError(f"Preset '{preset.name}' has no published weights (it exists for tests); "
                          "pass --weights random.")
    want = weights == "pretrained"
    clip = resolve_clip(preset.clip, clip_weights) if want or clip_weights is not None else None
    vfm = None
    if preset.vfm is not None and (want or vfm_weights is not None):
        vfm = resolve_vfm(preset.vfm, vfm_weights)
    if want:
        missing: list[ClipSpec | VfmSpec] = [spec for spec, src in ((preset.clip, clip), (preset.vfm, vfm))
                                             if spec is not None and src is None]
        if missing:
            raise WeightsError(missing_weights_message(missing))
    return clip, vfm

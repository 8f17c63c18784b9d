"""Paths and URLs: the one rule for telling them apart, and the output folder's checks."""

from __future__ import annotations

import os
import tempfile

from geogla.errors import OutputError


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``https://``, ``file://``, ...) rather than a plain
    local path: URLs are passed on as given (to fsspec or GDAL), never checked on the local disk."""
    return "://" in path


#: URL schemes and the GDAL virtual file systems that read them with range requests.
GDAL_FILESYSTEMS = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
                    "az": "/vsiaz/", "abfs": "/vsiaz/"}


def gdal_name(path: str) -> str:
    """The name GDAL opens ``path`` by: a local path made absolute, ``file://`` stripped, an
    ``http(s)://`` URL under ``/vsicurl/``, an ``s3://bucket/key`` as ``/vsis3/bucket/key`` (and
    ``gs://``, ``az://`` alike); a name GDAL knows already (``/vsi...``) unchanged."""
    if not is_url(path):
        return path if path.startswith("/vsi") else os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        return rest
    prefix = GDAL_FILESYSTEMS.get(scheme)
    if prefix is None:
        return path
    return prefix + (path if prefix == "/vsicurl/" else rest)


def absolute(path: str) -> str:
    """``path`` made absolute when it is a local path (another process, in another folder, can then
    find it); a URL unchanged."""
    return path if is_url(path) else os.path.abspath(path)


def check_output_dir(path: str) -> None:
    """Raise :class:`OutputError` unless ``path`` is a folder files can be written in, or one that
    can be created; nothing is created (see :func:`make_output_dir`)."""
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise OutputError(f"The output folder {path} is a file.")
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"The output folder {path} cannot be created: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "written" if existing == target else "created"
        raise OutputError(f"The output folder {path} cannot be {verb}: permission denied.")


def make_output_dir(path: str) -> None:
    """Create ``path`` if needed and check that files can be written in it (:class:`OutputError`)."""
    check_output_dir(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".geogla-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"The output folder {path} cannot be written: {exc.strerror or exc}.") from None

"""Paths and URLs: the one rule for telling them apart, and the output folder's checks."""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

from geogla.errors import OutputError, first_line


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``https://``, ``file://``, ...) or a name of one of
    GDAL's virtual file systems (``/vsis3/bucket/key``, ``/vsicurl/https://...``, as QGIS names a
    remote layer's source) rather than a plain local path: these are passed on as given (to fsspec
    or GDAL), never checked on the local disk."""
    return "://" in path or path.startswith("/vsi")


#: URL schemes and the GDAL virtual file systems that read them with range requests.
GDAL_FILESYSTEMS = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
                    "az": "/vsiaz/", "abfs": "/vsiaz/"}


def gdal_name(path: str) -> str:
    """The name GDAL opens ``path`` by: a local path made absolute, ``file://`` stripped, an
    ``http(s)://`` URL under ``/vsicurl/``, an ``s3://bucket/key`` as ``/vsis3/bucket/key`` (and
    ``gs://``, ``az://`` alike); a name GDAL knows already (``/vsi...``) unchanged."""
    if path.startswith("/vsi"):
        return path
    if not is_url(path):
        return os.path.abspath(path)
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
    can be created; nothing is created (see :func:`make_output_dir`).  A URL (``s3://bucket/prefix``)
    must name a bucket that exists and can be reached (:func:`check_output_url`)."""
    if path.startswith("/vsi"):
        raise OutputError(f"The output folder {path} is a GDAL virtual file name, which geogla reads "
                          "scenes by; write outputs to a folder or a URL such as s3://bucket/prefix.")
    if is_url(path):
        check_output_url(path)
        return
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
    """Create ``path`` if needed and check that files can be written in it (:class:`OutputError`);
    for a URL, write and remove a small object under it."""
    check_output_dir(path)
    if is_url(path):
        _probe_output_url(path)
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".geogla-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"The output folder {path} cannot be written: {exc.strerror or exc}.") from None


def _url_fs(path: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as exc:  # no filesystem for the scheme, or a malformed URL
        raise OutputError(
            f"The output location {path} is not a URL geogla can write to: {first_line(exc)}.") from None
    return fs, str(root)


def check_output_url(path: str) -> None:
    """Raise :class:`OutputError` unless the bucket (or container) of ``path`` exists and can be
    reached with the credentials in force; nothing is written."""
    fs, root = _url_fs(path)
    bucket = root.strip("/").split("/", 1)[0]
    if not bucket:
        raise OutputError(f"The output location {path} names no bucket.")
    try:
        found = fs.exists(bucket)
    except Exception as exc:  # credentials, network, permissions: botocore's and fsspec's own types
        raise OutputError(f"The output location {path} cannot be reached: {first_line(exc)}.") from None
    if not found:
        raise OutputError(f"The output bucket {bucket} of {path} does not exist.")


def _probe_output_url(path: str) -> None:
    fs, root = _url_fs(path)
    probe = f"{root.rstrip('/')}/.geogla-write-test-{uuid.uuid4().hex}"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        raise OutputError(f"The output location {path} cannot be written: {first_line(exc)}.") from None


def join_url(folder: str, name: str) -> str:
    """``name`` inside ``folder``: a local path or a URL (``s3://bucket/prefix`` + ``/name``)."""
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)

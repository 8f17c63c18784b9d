"""Paths and URLs: the one rule for telling them apart."""

from __future__ import annotations

import os


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL (``s3://``, ``https://``, ``file://``, ...) rather than a plain
    local path: URLs are passed on as given (to fsspec or GDAL), never checked on the local disk."""
    return "://" in path


def absolute(path: str) -> str:
    """``path`` made absolute when it is a local path (another process, in another folder, can then
    find it); a URL unchanged."""
    return path if is_url(path) else os.path.abspath(path)

"""Sizes and durations written as people write them."""

from __future__ import annotations


def format_bytes(size: float) -> str:
    """``size`` bytes in binary units: ``512 B``, ``3.4 MiB``, ``1.21 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.{1 if size < 100 else 0}f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``seconds`` as hours and minutes: ``2h05m``, ``14m``, ``<1m``."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "<1m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def format_elapsed(seconds: float) -> str:
    """Elapsed time: ``12s``, ``5m12s``, ``2h05m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"

"""What a stage reports: the seconds its kinds of work took, whether it found its work done, and
metrics it measured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class StageResult:
    """The report of one stage call.

    Attributes:
        seconds: seconds per kind of work (``"encode"``, ``"read"``, ``"attend"``, ...).
        skipped: the store said the work was done already (a resumed run); nothing was computed.
        metrics: figures the stage measured (the ``evaluate`` stage: ``miou``, ``pixel_accuracy``, ``ber``).
    """

    seconds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    skipped: bool = False
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


#: The report of a stage that found its work done.
SKIPPED = StageResult(skipped=True)


def add_seconds(total: dict[str, float], result: StageResult) -> None:
    """Add ``result``'s seconds into ``total``, kind by kind."""
    for kind, seconds in result.seconds.items():
        total[kind] = total.get(kind, 0.0) + seconds

"""One exception hierarchy for geogla.

Everything geogla raises on purpose derives from :class:`GeoglaError`.  Errors a user can fix
(a bad path, a bad option, missing weights) derive from :class:`UserInputError`: the command line
prints their message as one sentence and exits with code 2.  Anything else is a fault (a full
disk, a lost store, a bug) and exits 1 with one sentence (:func:`describe_fault`).
"""

from __future__ import annotations

import errno


class GeoglaError(Exception):
    """Base class of every error geogla raises on purpose."""


class UserInputError(GeoglaError):
    """A problem the user can fix; reported as one sentence, exit code 2."""


class SceneError(UserInputError):
    """The scene cannot be opened or read (missing, not a raster, truncated, bad band)."""


class ClassSpecError(UserInputError):
    """The class list is empty, has an empty name, or names a class twice."""


class OutputError(UserInputError):
    """The output folder or store cannot be written."""


class DiskSpaceError(OutputError):
    """The run store and outputs would not fit in the free space of their disks."""


class WeightsError(UserInputError):
    """Model weights cannot be found or loaded; the message says how to provide them."""


class ConfigError(UserInputError):
    """An option or preset has an invalid value or names something that does not exist."""


class StoreError(UserInputError):
    """The run store belongs to another scene or configuration, or is locked by another run."""


class DamagedStoreError(StoreError):
    """The run store's metadata cannot be read or contradicts itself: nothing in it can be trusted."""


class MissingStoreError(StoreError):
    """No run store where one was asked for (:meth:`geogla.store.RunStore.open`)."""


class RunFault(GeoglaError):
    """A fault whose message is the whole sentence the command prints (exit code 1)."""


class LostStoreError(RunFault):
    """The run store disappeared while the run was using it (removed, or its storage unreachable)."""


class CorruptChunkError(GeoglaError):
    """A chunk of the run store fails its checksum, or a far-summary array is missing, where a stage
    reads it: the run verifies the store and makes what fails again (a fault, when it escapes)."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message without its closing full stop (so that it ends a
    sentence of ours), or its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from or while handling (``__cause__``, else
    ``__context__``), outermost first, each once."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_fault(exc: BaseException) -> str:
    """One sentence for an error that is not the user's: what happened, that the work done is kept,
    and that the same command resumes (a full disk is named as such, wherever it was hit)."""
    if isinstance(exc, RunFault):
        return str(exc)
    if any(_is_disk_full(e) for e in exception_chain(exc)):
        return ("the disk is full (no space left on device); the work done so far is kept in the run "
                "store: free some space, then run the same command again to resume.")
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    what = f"{type(exc).__name__}: {first[:300].rstrip('.')}" if first else type(exc).__name__
    return (f"{what}; the work done so far is kept in the run store: run the same command again to "
            "resume (-v shows the details).")


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "no space left on device" in str(exc).lower()  # GDAL's errors carry only the text

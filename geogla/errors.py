"""One exception hierarchy for geogla.

Everything geogla raises on purpose derives from :class:`GeoglaError`.  Errors a user can fix
(a bad path, a bad option, missing weights) derive from :class:`UserInputError`: the command line
prints their message as one sentence and exits with code 2.  Anything else is a bug and exits 1.
"""

from __future__ import annotations


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

"""Publishing a run's outputs as one set: all of the new run's, or all of the previous one's.

A set is written in three steps (:func:`output_set`):

1. every member is written under a temporary name beside its final path (the hidden
   ``.<name>.<id>.part<suffix>`` of :class:`geogla.cog.ScratchFiles`); a kill here leaves the
   previous set whole, and its temporaries are removed when the folder is next published to;
2. a journal, ``.<stem>.outputs.json`` in the same folder, is written atomically: it lists the
   renames in their fixed order (data first, the STAC item last, as the set's commit record) and
   the files of the previous set that the new one does not have (a probability COG no longer
   asked for, metrics of other classes); from here on the set is committed;
3. the renames are done in that order (:func:`os.replace`, atomic each, same folder), the retired
   files are removed, and the journal is removed last.

A kill during step 3 leaves the journal: :func:`recover`, called when a run starts and before
a set is written, finishes the renames it lists (every temporary it names is complete), so the
folder holds one whole set again before anything reads or writes it.  One publisher per
folder and stem at a time (the run store's lock).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from geogla.cog import ScratchFiles, atomic_output

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


def journal_path(folder: str | os.PathLike[str], stem: str) -> Path:
    """The journal of the output set named ``stem`` in ``folder`` (present only while a set is being
    published, or after a kill while it was)."""
    return Path(folder) / f".{stem}.outputs.json"


def recover(journal: Path, members: Sequence[Path]) -> bool:
    """Make the folder hold one whole set again; return whether an interrupted publication was finished.

    When ``journal`` exists, its renames and removals are done (those already done are skipped)
    and it is removed.  Then the temporaries of earlier, killed writes of ``members`` (all the
    files a set may have) and of the journal are removed.
    """
    finished = False
    if journal.exists():
        try:
            record = json.loads(journal.read_text(encoding="utf-8"))
            moves = [(journal.parent / a, journal.parent / b) for a, b in record["moves"]]
            retired = [journal.parent / name for name in record["retired"]]
        except (OSError, ValueError, KeyError, TypeError):
            # Written atomically, so never half-written by a kill: damaged by something else.
            log.warning("the output journal %s cannot be read; it is removed and the outputs are "
                        "written again", journal)
        else:
            _apply(moves, retired)
            finished = True
            log.warning("finished publishing the outputs in %s that a stopped run had written: %s",
                        journal.parent, ", ".join(final.name for _, final in moves))
        journal.unlink(missing_ok=True)
    for path in [*members, journal]:
        ScratchFiles.remove_stale(path)
    return finished


def _apply(moves: Sequence[tuple[Path, Path]], retired: Sequence[Path]) -> None:
    """Rename each temporary onto its final path, in order, the last one after the retired files
    are removed; a temporary that is gone was renamed already."""
    *data, (commit_from, commit_to) = moves
    for source, target in data:
        if source.exists():
            os.replace(source, target)
    for path in retired:
        path.unlink(missing_ok=True)
    if commit_from.exists():
        os.replace(commit_from, commit_to)


@contextmanager
def output_set(journal: Path, members: Sequence[Path],
               retired: Sequence[Path] = ()) -> Iterator[dict[Path, Path]]:
    """Publish ``members`` (final paths in one folder, the commit record last) as one set.

    Yields ``{final path: temporary path}``; the caller writes every temporary.  On a normal exit
    the set is committed and published (see the module's docstring); ``retired`` files (of a
    previous set, not members of this one) are removed before the last member appears.  On an
    exception before the commit every temporary is removed and the previous set is left as it
    was; after the commit an exception leaves the journal, and :func:`recover` finishes the work.
    """
    if not members:
        raise ValueError("an output set needs at least one member")
    folder = journal.parent
    if any(path.parent != folder for path in [*members, *retired]):
        raise ValueError("the members of an output set and its journal must share one folder")
    recover(journal, [*members, *retired])
    scratches = {path: ScratchFiles(path) for path in members}
    pending = {path: scratch.result for path, scratch in scratches.items()}
    try:
        yield dict(pending)
        missing = [final.name for final, temporary in pending.items() if not temporary.exists()]
        if missing:
            raise RuntimeError(f"nothing was written for {', '.join(missing)}")
        with atomic_output(journal) as scratch:
            record = {"version": JOURNAL_VERSION,
                      "moves": [[pending[m].name, m.name] for m in members],
                      "retired": [path.name for path in retired]}
            scratch.result.write_text(json.dumps(record, indent=1), encoding="utf-8")
    except BaseException:
        for scratch in scratches.values():
            scratch.cleanup()
        raise
    _apply([(pending[m], m) for m in members], retired)
    with suppress(FileNotFoundError):
        journal.unlink()


def upload_set(folder: str | os.PathLike[str], url: str, members: Sequence[str],
               retired: Sequence[str] = ()) -> None:
    """Publish an output set built in the local ``folder`` to the object-storage prefix ``url``.

    Each member (file names, the commit record last) is uploaded whole and appears under its final
    name only once complete (an object store's PUT, multipart included, is atomic); the ``retired``
    objects of a previous set are removed before the last member is uploaded.  A kill in between
    leaves the previous set's commit record (the STAC item) naming what it named, some data objects
    already new; the next run publishes the whole set again.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    *data, commit = members
    for name in data:
        fs.put_file(str(Path(folder) / name), f"{root}/{name}")
    for name in retired:
        with suppress(FileNotFoundError):
            fs.rm_file(f"{root}/{name}")
    fs.put_file(str(Path(folder) / commit), f"{root}/{commit}")

"""One run at a time per run store: a lock object in the store's root, over fsspec.

The lock is a small JSON object, ``<store>/lock.json``, naming its owner (a random id per lock),
the host, the process id and start time, and a heartbeat time that a daemon thread refreshes every
few seconds while the run goes on.  Another run finding it is refused with :class:`StoreError`,
unless the lock is *stale*: its heartbeat is older than the timeout (the owner died or lost the
store), or its owner is a process of this host that no longer exists (a run killed with SIGKILL is
resumable at once by running it again).

Creating the lock is atomic where the file system allows it (a hard link on local disks, a
conditional ``If-None-Match`` PUT on S3 through s3fs); elsewhere it is create-if-absent followed by
a read-back.  Taking over a stale lock is delete-then-create, so two runs taking over the same stale
lock in the same instant may both succeed; the heartbeat notices when the lock stops being ours and
logs a warning.  Heartbeat times are compared across machines, so their clocks should agree to well
within the timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self, cast

import fsspec
import psutil
from fsspec.implementations.local import LocalFileSystem

from geogla.errors import OutputError, StoreError

LOCK_NAME = "lock.json"
#: Seconds without a heartbeat after which a lock is stale.
DEFAULT_TIMEOUT = 60.0
#: Seconds between two heartbeats.
DEFAULT_INTERVAL = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockInfo:
    """The content of a lock object: who holds it and when it last said it was alive."""

    owner: str
    hostname: str
    pid: int
    started: float  # the process's start time: a pid reused by another process is not the owner
    heartbeat: float  # time.time() of the last refresh

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LockInfo:
        d = json.loads(data)
        return cls(owner=str(d["owner"]), hostname=str(d["hostname"]), pid=int(d["pid"]),
                   started=float(d["started"]), heartbeat=float(d["heartbeat"]))


def _process_alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` of this host exists, is not a zombie, and started at ``started``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return cast(bool, abs(proc.create_time() - started) < 1.0)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; whose it is cannot be told, so it is not taken over


class RunLock:
    """The lock of the run store at ``store_url`` (any fsspec URL or local path).

    Use :meth:`acquire` and :meth:`release` (or ``with``).  ``timeout`` is the heartbeat age after
    which a lock is stale; ``interval`` the time between heartbeats (keep it well under ``timeout``).
    """

    def __init__(self, store_url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.store_url = store_url
        self.timeout = timeout
        self.interval = interval
        self.fs, root = fsspec.core.url_to_fs(store_url)
        self.path = f"{root.rstrip('/')}/{LOCK_NAME}"
        self.owner = uuid.uuid4().hex
        self._host = socket.gethostname()
        self._started = psutil.Process().create_time()
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set by the heartbeat when the lock object is found to belong to another run.
        self.lost = False

    @property
    def held(self) -> bool:
        return self._held

    # -- acquiring -----------------------------------------------------------------------------
    def acquire(self, *, heartbeat: bool = True) -> None:
        """Take the lock, or check that it is still ours; :class:`StoreError` when another run holds it.

        Calling it again while held re-creates the lock object when it has gone (the store was
        removed and created afresh by ``--overwrite``).  With ``heartbeat`` the refreshing thread
        starts (once).  Failing to write the lock object raises :class:`OutputError`.
        """
        try:
            self._take()
        except OSError as exc:
            raise OutputError(f"The run store {self.store_url} cannot be locked: "
                              f"{getattr(exc, 'strerror', None) or exc}.") from None
        self._held = True
        if heartbeat and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat_loop, name="geogla-lock-heartbeat", daemon=True)
            self._thread.start()

    def _take(self) -> None:
        for _ in range(5):  # each pass judges the lock object as it is now
            current = self._read()
            if current is not None and current.owner == self.owner:
                return
            if current is not None:
                if not self._stale(current):
                    raise self._refusal(current)
                if self._read() != current:
                    continue  # taken over or released in between: judge the new state
                log.warning("Taking over the stale lock of %s (pid %d on %s).", self.store_url, current.pid,
                            current.hostname)
                self._delete()
            if self._create(self._info()):
                mine = self._read()
                if mine is not None and mine.owner != self.owner:  # a non-atomic create lost a race
                    raise self._refusal(mine)
                return
        raise StoreError(f"The lock of the run store {self.store_url} kept changing hands; run again.")

    def _stale(self, info: LockInfo) -> bool:
        if time.time() - info.heartbeat > self.timeout:
            return True
        return info.hostname == self._host and not _process_alive(info.pid, info.started)

    def _refusal(self, info: LockInfo) -> StoreError:
        age = max(time.time() - info.heartbeat, 0.0)
        return StoreError(
            f"The run store {self.store_url} is in use by another run (pid {info.pid} on "
            f"{info.hostname}, last heartbeat {age:.0f} s ago); wait for it to finish, or remove "
            f"{self.path if self._local() else self.fs.unstrip_protocol(self.path)} "
            "if that run is gone."
        )

    # -- heartbeat and release -----------------------------------------------------------------
    def _beat_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except (
                OSError,
                ValueError,
            ) as exc:  # a transient store error must not end the run; the next beat retries
                log.debug("Lock heartbeat of %s failed: %s", self.store_url, exc)

    def _beat(self) -> None:
        current = self._read()
        if current is None:
            return  # the store is being re-created (--overwrite); acquire() writes the lock again
        if current.owner != self.owner:
            if not self.lost:
                log.warning("The lock of %s was taken over by pid %d on %s.", self.store_url, current.pid,
                            current.hostname)
            self.lost = True
            return
        self._write(self._info())

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is ours; never raises for I/O."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self._held:
            return
        self._held = False
        try:
            current = self._read()
            if current is not None and current.owner == self.owner:
                self._delete()
        except OSError as exc:  # the run's own outcome matters more; the lock goes stale by itself
            log.warning("Could not remove the lock of %s: %s", self.store_url, exc)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- the lock object -----------------------------------------------------------------------
    def _info(self) -> LockInfo:
        return LockInfo(owner=self.owner, hostname=self._host, pid=os.getpid(), started=self._started,
                        heartbeat=time.time())

    def _local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def _read(self) -> LockInfo | None:
        """The lock object's content; None when there is none.  Unreadable content counts as a lock
        last refreshed when the object was modified."""
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            return LockInfo.from_bytes(data)
        except (ValueError, KeyError, TypeError):
            try:
                modified = self._modified()
            except FileNotFoundError:
                return None
            return LockInfo(owner="", hostname="unknown", pid=0, started=0.0, heartbeat=modified)

    def _modified(self) -> float:
        stamp: Any = self.fs.modified(self.path)
        return float(stamp.timestamp())

    def _create(self, info: LockInfo) -> bool:
        """Create the lock object with ``info`` unless one exists; False when one does."""
        if self._local():
            tmp = self._write_temp(info)
            try:
                os.link(tmp, self.path)  # atomic, and the object appears complete
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            self.fs.pipe_file(self.path, info.to_bytes(), mode="create")
            return True
        except FileExistsError:
            return False

    def _write(self, info: LockInfo) -> None:
        if self._local():
            os.replace(self._write_temp(info), self.path)  # readers never see a half-written object
        else:
            self.fs.pipe_file(self.path, info.to_bytes())

    def _write_temp(self, info: LockInfo) -> str:
        tmp = f"{os.path.dirname(self.path)}/.{LOCK_NAME}.{self.owner}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(info.to_bytes())
        return tmp

    def _delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone
            self.fs.rm_file(self.path)

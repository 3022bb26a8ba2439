"""The decision log's writer: one whole JSON line per record, never in a request's way.

* **Never fails a request.** Records are queued (bounded; a full queue drops and counts) and
  written by one background thread; a failed write (full disk, ``/dev/full``, a vanished
  folder) is counted, reported (:attr:`DecisionLogWriter.stats`, ``/metrics``, ``/healthz``) and
  the server keeps serving.
* **Whole lines or absent.** Each record is one ``os.write`` of a complete line on a file opened
  ``O_APPEND``. After a failed or short write the file is truncated back to its size before the
  write; where that is impossible (not a regular file, truncation refused) the next record
  starts on a new line, so a torn fragment is never glued to a record.
* **Rotation.** Before each write the path is checked as the standard library's
  :class:`logging.handlers.WatchedFileHandler` does (device and inode): after a
  ``logrotate``-style move (or a deletion) the file is reopened at the path.
* **Batch hook.** ``on_batch`` (e.g. the shadow selector) sees each batch of queued records
  before they are written and may fill fields in; its errors are counted, never raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modi.serving.errors import ServerConfigError

log = logging.getLogger(__name__)

#: Records queued at most before new ones are dropped (and counted).
MAX_PENDING = 10_000
#: Records handed to ``on_batch`` at once at most.
MAX_BATCH = 256


@dataclass
class LogStats:
    """Counts of the decision log (since start)."""

    written: int = 0
    errors: int = 0
    dropped: int = 0
    hook_errors: int = 0
    reopened: int = 0
    last_error: str = ""
    last_error_ts: float = 0.0
    last_ok_ts: float = 0.0
    last_drop_ts: float = 0.0


class DecisionLogWriter:
    """Append records to ``path`` from a background thread; see the module docstring.

    Args:
        path: the log file (created; appended to).
        on_batch: called with each batch of records (mutable dicts) before they are written.
        max_pending: queue bound.
        interval_s: the writer wakes this often (records are handed over without waking it:
            no lock or thread switch per request).
        hold_s: keep each record up to this long for :meth:`update` (e.g. the client's
            measured end-to-end latency) before writing it; 0 writes at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
        max_pending: int = MAX_PENDING,
        interval_s: float = 0.05,
        hold_s: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.on_batch = on_batch
        self.stats = LogStats()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._torn = False
        self._raw_write: Callable[[int, bytes], int] = os.write  # tests inject short writes
        try:
            self._open()
        except OSError as e:
            raise ServerConfigError(f"cannot open the decision log {self.path}: {e}") from None
        self.max_pending = max_pending
        self.interval_s = interval_s
        self._buf: deque[dict[str, Any]] = deque()
        self._inflight = 0
        self._closed = False
        self._wake = threading.Event()
        self.hold_s = float(hold_s)
        # request_id -> (due, record, meta)
        self._held: dict[str, tuple[float, dict[str, Any], Any]] = {}
        self._held_lock = threading.Lock()
        self._release_all = False
        self._thread = threading.Thread(target=self._run, name="modi-decision-log", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the request side
    def submit(self, record: dict[str, Any], meta: Any = None) -> bool:
        """Queue ``record`` for writing (never blocks, never raises); ``False`` if dropped.
        ``meta`` is handed to an :meth:`update` of a held record."""
        if self.hold_s > 0 and not self._closed:
            with self._held_lock:
                if len(self._held) < self.max_pending:
                    rid = str(record.get("request_id", id(record)))
                    self._held[rid] = (time.monotonic() + self.hold_s, record, meta)
                    return True
        elif len(self._buf) < self.max_pending and not self._closed:
            self._buf.append(record)  # atomic; the writer wakes on its own clock
            return True
        with self._lock:
            self.stats.dropped += 1
            self.stats.last_drop_ts = time.time()
        return False

    def update(self, request_id: str, change: Callable[[dict[str, Any], Any], None]) -> bool:
        """Apply ``change(record, meta)`` to the held record of ``request_id`` and release it
        for writing; ``False`` if no such record is held (never held, already written, or
        unknown)."""
        with self._held_lock:
            item = self._held.pop(request_id, None)
        if item is None:
            return False
        try:
            change(item[1], item[2])
        finally:
            self._buf.append(item[1])
        return True

    @property
    def pending(self) -> int:
        """Records queued (or held) and not yet written."""
        return len(self._buf) + self._inflight + len(self._held)

    def healthy(self, window_s: float = 300.0) -> bool:
        """``False`` while writes fail (the last attempt failed) and for ``window_s`` seconds
        after a failed write or a dropped record."""
        s = self.stats
        last_bad = max(s.last_error_ts, s.last_drop_ts)
        if not last_bad:
            return True
        if s.last_error_ts and s.last_error_ts >= s.last_ok_ts:
            return False
        return time.time() - last_bad >= window_s

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record is written (or ``timeout_s``); whether it drained."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not self._buf and not self._inflight and not self._held:
                return True
            self._release_all = True
            self._wake.set()
            time.sleep(0.002)
        return not self._buf and not self._inflight and not self._held

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, stop the thread and close the file."""
        if self._thread.is_alive():
            self.flush(timeout_s)
            self._closed = True
            self._wake.set()
            self._thread.join(timeout_s)
        self._closed = True
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._drain()
            if self._closed:
                self._drain()
                return

    def _release_held(self) -> None:
        """Move held records whose time is up (all of them on flush/close) to the queue."""
        if not self._held:
            return
        now = time.monotonic()
        release_all = self._release_all or self._closed
        with self._held_lock:
            due = [k for k, (t, _, _) in self._held.items() if release_all or t <= now]
            for k in due:
                self._buf.append(self._held.pop(k)[1])
        self._release_all = False

    def _drain(self) -> None:
        self._release_held()
        buf = self._buf
        while buf:
            self._inflight = 1
            batch: list[dict[str, Any]] = []
            while buf and len(batch) < MAX_BATCH:
                batch.append(buf.popleft())
            self._inflight = len(batch)
            try:
                self._process(batch)
            except Exception:  # pragma: no cover - _process guards itself
                log.exception("decision log: unexpected error")
            finally:
                self._inflight = 0

    def _process(self, batch: list[dict[str, Any]]) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(batch)
            except Exception as e:
                with self._lock:
                    self.stats.hook_errors += 1
                log.warning("decision log: batch hook failed: %s: %s", type(e).__name__, e)
        for rec in batch:
            try:
                line = json.dumps(rec, separators=(",", ":"), allow_nan=False, default=_plain)
            except (TypeError, ValueError) as e:
                self._failed(f"record not serialisable: {e}")
                continue
            self.write_line(line.encode("utf-8") + b"\n")

    # ------------------------------------------------------------------ file handling
    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        st = os.fstat(fd)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)

    def _reopen_if_moved(self) -> None:
        """WatchedFileHandler's check: reopen when the path names another file or none."""
        try:
            st = os.stat(self.path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        if ident is not None and ident == self._ident and self._fd is not None:
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._open()
        self._torn = False  # a fresh file has no torn tail
        self.stats.reopened += 1
        log.info("decision log %s reopened (moved or deleted)", self.path)

    def write_line(self, data: bytes) -> bool:
        """Append one complete line (one ``write``); on failure count it, undo a partial write
        and return ``False``. Never raises."""
        with self._lock:
            try:
                self._reopen_if_moved()
            except OSError as e:
                self._failed_locked(f"cannot reopen: {e}")
                return False
            fd = self._fd
            assert fd is not None
            if self._torn:
                data = b"\n" + data
            try:
                st = os.fstat(fd)
                start: int | None = st.st_size if _is_regular(st.st_mode) else None
            except OSError:
                start = None
            try:
                n = self._raw_write(fd, data)
            except OSError as e:
                self._undo(fd, start)
                self._failed_locked(f"{type(e).__name__}: {e.strerror or e}")
                return False
            if n != len(data):
                self._undo(fd, start, partial=n > 0)
                self._failed_locked(f"short write: {n} of {len(data)} bytes")
                return False
            self._torn = False
            self.stats.written += 1
            self.stats.last_ok_ts = time.time()
            return True

    def _undo(self, fd: int, start: int | None, partial: bool = True) -> None:
        """Truncate back to ``start``; if that is impossible, start the next record afresh."""
        if start is None:
            self._torn = self._torn or partial
            return
        try:
            if os.fstat(fd).st_size != start:
                os.ftruncate(fd, start)
            if os.fstat(fd).st_size != start:
                self._torn = True
        except OSError:
            self._torn = True

    def _failed(self, message: str) -> None:
        with self._lock:
            self._failed_locked(message)

    def _failed_locked(self, message: str) -> None:
        s = self.stats
        s.errors += 1
        s.last_error = message
        s.last_error_ts = time.time()
        if s.errors == 1 or s.errors % 1000 == 0:
            log.error("decision log %s: write failed (%d so far): %s", self.path, s.errors,
                      message)  # fmt: skip


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _plain(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")

"""A plain HTTP server on loopback that honours byte ranges, for scenes read by URL (GDAL's
``/vsicurl/`` reads a remote GeoTIFF with range requests).  It counts the bytes it serves.

:func:`serving` runs it in a process of its own, as a real server runs (in the test's process its
thread would compete with the run for the interpreter): ``python tests/http_server.py ROOT``
prints its URL, and ``GET /__served__`` answers the body bytes served so far.
"""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer:
    """Serves the files of ``root`` at ``url``; :attr:`served` counts the body bytes sent."""

    def __init__(self, root: Path) -> None:
        self.root, self.served = root, 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                if self.path == "/__served__":
                    count = str(server.served).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(count)))
                    self.end_headers()
                    self.wfile.write(count)
                    return
                path = server.root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                match = _RANGE.match(self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        data = fh.read(end - start + 1)
                    with server._lock:
                        server.served += len(data)
                    self.wfile.write(data)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever()


class Served:
    """A :class:`RangeServer` running in another process: its :attr:`url` and :attr:`served`."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def served(self) -> int:
        with urllib.request.urlopen(f"{self.url}/__served__", timeout=30) as answer:
            return int(answer.read())


@contextmanager
def serving(root: Path) -> Iterator[Served]:
    """A :class:`RangeServer` of ``root``, in a process of its own, for the duration of the block."""
    proc = subprocess.Popen([sys.executable, __file__, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield Served(proc.stdout.readline().strip())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    running = RangeServer(Path(sys.argv[1]))
    print(running.url, flush=True)
    running.serve_forever()

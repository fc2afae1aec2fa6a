"""A server squatting on a model's port, as a leftover model server would: it answers 200
``{}`` to every request and notes each one, so a test can show the agent sent it nothing."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any

from tests.support.processes import HOST, free_port


class _Server(http.server.ThreadingHTTPServer):
    seen: list[str]  # "METHOD /path", one a request


class _Answer(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        assert isinstance(self.server, _Server)
        self.server.seen.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def squatter() -> Iterator[tuple[int, list[str]]]:
    """A squatter listening on a free port of 127.0.0.1: (its port, the requests it got)."""
    for _ in range(20):
        try:
            server = _Server((HOST, free_port()), _Answer)
            break
        except OSError:  # taken between the probe and the bind
            continue
    else:
        raise OSError("no free port to squat on")
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.seen
    finally:
        server.shutdown()
        server.server_close()

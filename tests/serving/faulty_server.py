"""A tiny HTTP server on 127.0.0.1 that misbehaves on cue, for the client SDK's retry tests.

Each request gets the next action of a script, then ``then`` for every later
one. Every connection carries one request and is closed after it, so a
dropped connection never takes another request with it. Always used as a
context manager: the server is stopped and stalled handlers are released.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time

PREDICTION = {
    "label": "red",
    "score": 0.75,
    "box": {"x": 1.0, "y": 2.0, "w": 30.0, "h": 40.0},
    "width": 64,
    "height": 48,
    "model": {"name": "faulty", "version": "1"},
}
REASONS = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Unavailable"}
ERRORS = {401: "unauthorized", 429: "rate_limited", 503: "overloaded"}


class FaultyServer:
    """Actions: ``"ok"`` (200 with :data:`PREDICTION`), ``"drop"`` (close without answering), ``"reset"``
    (close with a TCP reset), ``"stall"`` (answer nothing until stopped), ``"503"`` / ``"503 after N"``
    (``overloaded``, with ``Retry-After: N`` when given), ``"429 after N"``, ``"401"``, ``"502"`` (an HTML page)."""

    def __init__(self, *script: str, then: str = "ok") -> None:
        self.script, self.then = list(script), then
        self.arrivals: list[float] = []  # time.monotonic() of each request, in order
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request, self.rfile)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]

    def _handle(self, sock: socket.socket, rfile) -> None:
        sock.settimeout(5)
        try:
            path = _read_request(rfile)
        except (OSError, ValueError):
            return
        with self._lock:
            self.arrivals.append(time.monotonic())
            self.paths.append(path)
            action = self.script.pop(0) if self.script else self.then
        if action == "stall":
            self._stopping.wait(30)
        elif action == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif action != "drop":
            sock.sendall(_response(action))


def _read_request(rfile) -> str:
    """Read one request (head and body); its path."""
    request_line = rfile.readline(65536).decode("latin-1")
    if not request_line:
        raise ValueError("no request")
    length = 0
    while True:
        line = rfile.readline(65536).decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    rfile.read(length)
    return request_line.split()[1]


def _response(action: str) -> bytes:
    status_word, _, retry_after = action.partition(" after ")
    status = int(status_word) if status_word != "ok" else 200
    headers = {"Connection": "close"}
    if status == 200:
        body, headers["Content-Type"] = json.dumps(PREDICTION).encode(), "application/json"
    elif status == 502:
        body, headers["Content-Type"] = b"<html><body>502 Bad Gateway</body></html>", "text/html"
    else:
        error = ERRORS.get(status, "server_error")
        body = json.dumps({"error": error, "detail": f"scripted {status}"}).encode()
        headers["Content-Type"] = "application/json"
    if retry_after:
        headers["Retry-After"] = retry_after
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body

"""A stdlib HTTP server on 127.0.0.1, in a thread, for the download tests (no other network).

    with LocalServer({"/w.bin": data}) as server:   # server.url("/w.bin"), server.requests["/w.bin"]
        server.mode["/w.bin"] = "truncate"             # "ok" (default), "truncate" (half the body, then close), "404"
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class LocalServer:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.mode: dict[str, str] = {}
        self.requests: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                server.requests[self.path] += 1
                data, mode = server.files.get(self.path), server.mode.get(self.path, "ok")
                if data is None or mode == "404":
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if mode == "truncate" else data)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def refused_url(path: str = "/w.bin") -> str:
    """A URL on 127.0.0.1 where nothing listens (a port just freed): the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to 127.0.0.1 go straight to it, whatever proxies the environment names."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def files_under(folder) -> list[str]:
    """Every file left under `folder` (temporary names included), as relative paths."""
    from pathlib import Path

    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

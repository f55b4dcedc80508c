"""A real webhook receiver for tests: an `http.server` on 127.0.0.1 in a thread that checks
each request's signature as the README tells receivers to (written here independently of
`notify_app.signing`), answers from a script of status codes, and keeps what it got."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def receiver_verifies(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """The README's verification: t=<unix>,v1=<hex>, HMAC-SHA256 over b"<t>." + body."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts.get("v1", ""))


@dataclass
class Received:
    headers: Message  # case-insensitive, as HTTP header names are
    body: bytes
    verified: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    secret: str
    script: list[int] = field(default_factory=list)  # status codes to answer, then 200
    location: str = ""  # for a 3xx answer
    got: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = receiver_verifies(outer.secret, self.headers.get("X-HXO-Signature", ""), body)
                outer.got.append(Received(self.headers, body, ok))
                status = (outer.script.pop(0) if outer.script else 200) if ok else 401
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", outer.location)
                payload = b"bad signature" if not ok else b"ok"
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

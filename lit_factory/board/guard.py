"""Who may talk to the board: requests must name the board's own address, and, with ``--auth``, log in.

The board starts training processes and writes files, so a web page the user happens to visit must not drive it.
Two shapes of that attack are refused here:

- DNS rebinding: a site (``evil.example``) re-points its name at 127.0.0.1, so the browser sends the board
  requests whose ``Host`` is ``evil.example``. Only IP literals, ``localhost``, this machine's name and names
  given with ``--allowed-host`` pass.
- Cross-site requests: a page on another origin posts to http://127.0.0.1:7860; its ``Origin`` header names the
  other site. A request with an ``Origin`` must come from an allowed host; clients that send none (scripts,
  ``gradio_client``) pass.

A plain ASGI middleware (handed to gradio's FastAPI app through ``launch(app_kwargs=...)``), because gradio has
no option that checks ``Host`` against the bound address.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable
from urllib.parse import urlsplit

from lit_factory.errors import LitFactoryError


def host_name(netloc: str) -> str:
    """``host`` of a ``Host`` header or URL netloc (``[::1]:7860`` -> ``::1``, ``Example.COM:80`` -> ``example.com``)."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a ``--host`` value serves this machine only."""
    name = host_name(host)
    return name == "localhost" or (is_ip_literal(name) and ipaddress.ip_address(name).is_loopback)


class HostOriginGuard:
    """ASGI middleware: 403 for a request whose ``Host``, or ``Origin`` when sent, is not an allowed host.

    Args:
        app: The wrapped ASGI app.
        allowed_hosts: Host names accepted besides IP literals and ``localhost`` (e.g. this machine's name).
    """

    def __init__(self, app: Any, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = {"localhost", *(name.lower() for name in allowed_hosts)}

    def allowed(self, netloc: str) -> bool:
        name = host_name(netloc)
        return bool(name) and (is_ip_literal(name) or name in self.allowed_hosts)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
            origin = headers.get("origin")
            if not self.allowed(headers.get("host", "")):
                return await self._refuse(scope, send, f"Host {headers.get('host', '')!r} is not this board's address")
            if origin is not None and not self.allowed(urlsplit(origin).netloc):
                return await self._refuse(scope, send, f"Origin {origin!r} is not this board's address")
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: dict, send: Any, reason: str) -> None:
        body = f"lit-factory board: refused: {reason} (see --allowed-host)\n".encode()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def default_allowed_hosts(extra: Iterable[str] = ()) -> list[str]:
    """This machine's names (for a board bound beyond loopback) plus ``extra``."""
    names = {socket.gethostname(), socket.getfqdn()}
    return sorted({name.lower() for name in names if name} | {name.lower() for name in extra})


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``--auth user:password`` as gradio's ``auth`` pair."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise LitFactoryError("--auth: expected USER:PASSWORD (both non-empty). Fix: e.g. --auth alice:s3cret.")
    return user, password

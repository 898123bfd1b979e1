"""Who may connect: loopback by default; elsewhere only with the access secret.

Patient images are at stake, so listening on an address other than loopback needs an
explicit ``--allow-remote`` and a secret that every HTTP request and the websocket present
(``?secret=`` on the first page load, then an HTTP-only, same-site cookie). A request
without it gets 403 before trame sees it. The secret is random unless given, and printed
once. No TLS here: reach a remote server through an SSH tunnel (see the README).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket

from ..errors import InputError

COOKIE = "sslsegment_secret"
QUERY = "secret"


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False


def access_secret(host: str, allow_remote: bool, given: str | None) -> str | None:
    """The secret to require (None on loopback without one); refuses a silent remote listen."""
    if is_loopback(host):
        return given or None
    if not allow_remote:
        raise InputError(f"--host {host} listens beyond this machine: patient images would be reachable from "
                         "the network. Add --allow-remote (an access secret is then required), or use an SSH "
                         "tunnel to a loopback server (see the README)")
    if given is not None and len(given) < 16:
        raise InputError("--secret must have at least 16 characters")
    return given or secrets.token_urlsafe(24)


def secret_middleware(secret: str):
    """aiohttp middleware: 403 unless the request presents ``secret`` (query or cookie)."""
    from aiohttp import web  # noqa: PLC0415 (only with the web extra)

    @web.middleware
    async def require_secret(request, handler):
        from_query = request.query.get(QUERY, "")
        presented = from_query or request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(presented.encode(), secret.encode()):
            return web.Response(status=403, text="403: this SSLSegment server needs its access secret "
                                                 "(open the address printed when it started)\n")
        response = await handler(request)
        if from_query and hasattr(response, "set_cookie"):
            response.set_cookie(COOKIE, secret, httponly=True, samesite="Strict")
        return response

    return require_secret


def install(server, secret: str | None) -> None:
    """Put the middleware in front of every route of the trame server (before it starts)."""
    if not secret:
        return

    def on_bind(wslink_server):
        wslink_server.app.middlewares.append(secret_middleware(secret))

    server.controller.on_server_bind.add(on_bind)
    # The page hands ``?secret=`` to wslink's own handshake too: make it wslink's key as well.
    server.cli.set_defaults(authKey=secret)

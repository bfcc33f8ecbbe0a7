"""Who may talk to the server: the Host allow-list, the cross-site checks a local server needs, and the API key.

A server on 127.0.0.1 without a key is reachable by every web page its user opens: a page cannot read the
answers (no CORS headers), but a form or a `fetch` with a "simple" body would still queue jobs, and a page
whose name is rebound to 127.0.0.1 (DNS rebinding) would even read them. So: a Host header must name this
server; a request a browser marks as coming from another site (`Origin`, `Sec-Fetch-Site`) is refused unless
its origin was allowed (`--allowed-origin`); and with a key, every endpoint but /healthz and /docs needs it.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from .schema import RequestError
from .settings import ServerConfig

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN_PATHS = ("/healthz", "/docs")  # answered without the key (/healthz says only "ok" then)


def host_name(host: str) -> str:
    """The name part of a Host header ("[::1]:8000" -> "::1", "Example.COM.:80" -> "example.com")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def check_host(host: str | None, config: ServerConfig) -> RequestError | None:
    if "*" in config.allowed_hosts:
        return None
    name = host_name(host or "")
    if name in config.allowed_hosts:
        return None
    allowed = ", ".join(config.allowed_hosts)
    return RequestError(400, "Host", f"Host {host!r} is not served here; allowed: {allowed} (add names with "
                        "--allowed-host)", kind="host_not_allowed")


def check_site(method: str, host: str | None, origin: str | None, fetch_site: str | None, fetch_mode: str | None,
               config: ServerConfig) -> RequestError | None:
    """Refuse what a browser sends on behalf of another site's page: an `Origin` that is neither this server nor
    an allowed one, or (with no Origin) `Sec-Fetch-Site` cross-site / same-site, except a plain navigation to a
    page (a link followed: it changes nothing)."""
    if origin is not None:
        origin = origin.strip().lower().rstrip("/")
        if origin in config.allowed_origins:
            return None
        if origin != "null" and urlsplit(origin).netloc == (host or "").strip().lower():
            return None
        return RequestError(403, "Origin", f"a request from a page of another site (Origin {origin!r}) is refused; "
                            "start the server with --allowed-origin ORIGIN to let a web app of yours call it",
                            kind="cross_site")
    site = (fetch_site or "").strip().lower()
    if site in ("cross-site", "same-site"):
        if method in SAFE_METHODS and (fetch_mode or "").strip().lower() == "navigate":
            return None
        return RequestError(403, "Sec-Fetch-Site", f"a request from a page of another site (Sec-Fetch-Site: {site}) "
                            "is refused", kind="cross_site")
    return None


def has_key(authorization: str | None, config: ServerConfig) -> bool:
    """No key configured, or 'Authorization: Bearer <the key>'."""
    if not config.api_key:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), config.api_key.encode())


def unauthorized() -> RequestError:
    return RequestError(401, "Authorization", "a valid 'Authorization: Bearer <api key>' header is required",
                        kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})

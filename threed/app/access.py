"""Who may use the app: this machine only, unless a login is set or it is explicitly waived.

On a loopback address (``127.0.0.1``, ``::1``, ``localhost``) only this machine reaches the page,
and no login is needed. Any other ``--host`` (``0.0.0.0``, a LAN address, a host name) serves
everyone who can reach the port, and the page starts jobs and serves every run in the output
folder. So such a host needs a login (``--auth USER:PASSWORD``, gradio's own login page and
cookie, which every API route checks too) or an explicit ``--no-auth``, which is warned about.

Gradio's login travels in plain HTTP: on an untrusted network put the app behind an HTTPS proxy.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path

from threed.errors import ThreedError

log = logging.getLogger(__name__)

Credentials = list[tuple[str, str]]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only: a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name or "0.0.0.0"-style wildcard spelled otherwise: not provably local
        return False


def parse_credentials(items: Iterable[str], source: str = "--auth") -> Credentials:
    """``["ann:secret", ...]`` -> ``[("ann", "secret"), ...]``; the password may contain ``:``."""
    out: Credentials = []
    for item in items:
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise ThreedError(f"{source} expects USER:PASSWORD with both parts non-empty (e.g. --auth ann:'a long "
                              f"passphrase'), got {user.strip() + ':…' if sep else 'no colon'}")
        out.append((user.strip(), password))
    users = [u for u, _ in out]
    if len(set(users)) != len(users):
        raise ThreedError(f"{source} names a user twice: {', '.join(sorted({u for u in users if users.count(u) > 1}))}")
    return out


def read_auth_file(path: str | Path) -> list[str]:
    """The ``USER:PASSWORD`` lines of ``path``; blank lines and ``#`` comments are skipped.

    A file keeps passwords out of the process list, where ``--auth`` shows them to every local user.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ThreedError(f"cannot read --auth-file {path}: {exc.strerror or exc}") from exc
    items = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not items:
        raise ThreedError(f"--auth-file {path} holds no USER:PASSWORD line")
    return items


def logins(items: Iterable[str] | None, auth_file: str | Path | None = None) -> Credentials:
    """The logins of ``--auth`` items and an ``--auth-file``, together."""
    return parse_credentials(list(items or []) + (read_auth_file(auth_file) if auth_file else []),
                             "--auth-file" if auth_file and not items else "--auth")


def resolve_access(host: str, auth: Credentials | None, no_auth: bool = False) -> Credentials | None:
    """The logins to require on ``host`` (None: none); a :class:`ThreedError` when a public host has neither."""
    if auth and no_auth:
        raise ThreedError("--auth and --no-auth contradict each other: give one")
    if auth:
        return list(auth)
    if is_loopback(host):
        return None
    if no_auth:
        log.warning("threed app: serving %s WITHOUT A LOGIN (--no-auth): anyone who can reach this port can run "
                    "jobs on this machine and download every run in the output folder", host)
        return None
    raise ThreedError(f"--host {host} serves the app to other machines, so it needs a login: add --auth USER:PASSWORD "
                      f"(repeatable; or --auth-file FILE, one USER:PASSWORD per line, which keeps the password out "
                      f"of the process list), or --no-auth to let in anyone who can reach it; "
                      f"--host 127.0.0.1 serves this machine only")

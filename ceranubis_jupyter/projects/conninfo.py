"""Keeping PostgreSQL passwords out of messages: redact a store URL, scrub server text.

Messages about a store end up in notebook outputs and logs, so nothing that names a store
may carry its password: not the URL as given (``postgresql://user:pass@host/db``, a password
with ``/`` or ``@`` in it, an empty user, ``?password=...``, or a ``key=value`` conninfo
string), and not libpq's own error text, which can echo pieces of what it was given.
Stdlib only: it works before psycopg is imported, and without it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

MASK = "***"
# Where a password should live instead of the URL (said in errors about a store).
PASSWORD_ADVICE = (
    "keep the password out of the URL: use ~/.pgpass, PGPASSWORD or a pg_service.conf service"
)
# Shorter pieces of a password are not scrubbed from server text: they would match
# ordinary words (a 1-3 letter password is no secret anyway).
MIN_SCRUB_LENGTH = 4
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_SEPARATORS = "@/:?#&="
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def _split_url(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, authority, rest)`` of a URL, the authority ending at its last ``@``."""
    scheme, sep, tail = url.partition("://")
    if not sep:
        return None
    end = len(tail)
    for stop in "?#":
        found = tail.find(stop)
        if found != -1:
            end = min(end, found)
    at = tail.rfind("@", 0, end)
    if at == -1:
        return f"{scheme}://", "", tail
    return f"{scheme}://", tail[:at], tail[at:]


def redact(url: str) -> str:
    """The store URL or conninfo string with every password replaced by ``***``."""
    parts = _split_url(url)
    if parts is None:
        return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, url)
    scheme, userinfo, rest = parts
    user, colon, _ = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:{MASK}"
    rest = _QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, rest)
    return f"{scheme}{userinfo}{rest}"


def passwords_in(url: str) -> list[str]:
    """Every password the URL or conninfo string carries, as written and decoded."""
    found: list[str] = []
    parts = _split_url(url)
    if parts is None:
        found += [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(url)]
    else:
        _, userinfo, rest = parts
        if ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        query = rest.partition("?")[2].partition("#")[0]
        found += [value for key, value in parse_qsl(query) if key.lower() == "password"]
        found += [m.group(2) for m in _QUERY_PASSWORD.finditer(rest)]
    variants = {variant for secret in found for variant in (secret, unquote(secret))}
    return sorted((v for v in variants if v), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. libpq's error message) without the URL's passwords or their pieces."""
    cleaned = text.replace(url, redact(url))
    for secret in passwords_in(url):
        cleaned = cleaned.replace(secret, MASK)
        for piece in _pieces(secret):
            cleaned = cleaned.replace(piece, MASK + "@" if piece.endswith("@") else MASK)
    return cleaned


def _pieces(secret: str) -> list[str]:
    """The parts of a password that a parser may have split at ``@``, ``/`` or ``:``.

    A parser that stops the user info at the password's own ``@`` takes the rest for the
    host and echoes it as ``rest@host``: that tail is scrubbed whatever its length.
    """
    tails = [secret[i + 1 :] + "@" for i, c in enumerate(secret) if c in _SEPARATORS]
    pieces = [p for p in re.split(r"[@/:?#&=]", secret) if len(p) >= MIN_SCRUB_LENGTH]
    return sorted({*tails, *pieces} - {secret, "@"}, key=len, reverse=True)


__all__ = ["MASK", "PASSWORD_ADVICE", "passwords_in", "redact", "scrub"]

"""HTTP Digest access authentication (RFC 7616), client side: parse a challenge, answer it.

Pure: no I/O. Hikvision and Dahua cameras ask for Digest with MD5 and qop=auth; SHA-256 and the
-sess variants are supported too. auth-int (a hash of the body) is not needed for GET and is not
offered by cameras, so a challenge that only allows auth-int is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


class DigestError(ValueError):
    """A challenge this client cannot answer."""


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    qop: str | None  # "auth" or None (RFC 2069 style, no qop)
    algorithm: str  # e.g. "MD5", "SHA-256-sess"
    opaque: str | None = None
    userhash: bool = False


def parse_challenge(header: str) -> Challenge:
    """The Digest challenge of a WWW-Authenticate header value (possibly one of several schemes)."""
    m = re.search(r"(?i)\bdigest\s+", header)
    if m is None:
        raise DigestError(f"no Digest challenge in {header[:120]!r}")
    params: dict[str, str] = {}
    rest = header[m.end():]
    pos = 0
    while pos < len(rest):
        pm = _PARAM.match(rest, pos)
        if pm is None or pm.end() == pos:
            break
        value = pm.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[pm.group(1).lower()] = value
        pos = pm.end()  # a following scheme ("Basic realm=...") is no `name=` and ends the loop
    if "nonce" not in params or "realm" not in params:
        raise DigestError(f"Digest challenge without realm or nonce: {header[:120]!r}")
    algorithm = params.get("algorithm", "MD5")
    base = algorithm.upper().removesuffix("-SESS")
    if base not in ("MD5", "SHA-256"):
        raise DigestError(f"Digest algorithm {algorithm!r} is not supported (MD5, SHA-256 and their -sess)")
    qop = None
    if "qop" in params:
        offered = [q.strip().lower() for q in params["qop"].split(",")]
        if "auth" not in offered:
            raise DigestError(f"Digest qop {params['qop']!r}: only 'auth' is supported")
        qop = "auth"
    return Challenge(realm=params["realm"], nonce=params["nonce"], qop=qop, algorithm=algorithm,
                     opaque=params.get("opaque"), userhash=params.get("userhash", "").lower() == "true")


def _h(algorithm: str, text: str) -> str:
    fn = hashlib.sha256 if algorithm.upper().startswith("SHA-256") else hashlib.md5
    return fn(text.encode("utf-8")).hexdigest()


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(ch: Challenge, method: str, uri: str, username: str, password: str, nc: int, cnonce: str) -> str:
    """The Authorization header value answering `ch` for one request (nc: the nonce count, from 1)."""
    alg = ch.algorithm
    ha1 = _h(alg, f"{username}:{ch.realm}:{password}")
    if alg.upper().endswith("-SESS"):
        ha1 = _h(alg, f"{ha1}:{ch.nonce}:{cnonce}")
    ha2 = _h(alg, f"{method}:{uri}")
    ncv = f"{nc:08x}"
    if ch.qop:
        response = _h(alg, f"{ha1}:{ch.nonce}:{ncv}:{cnonce}:{ch.qop}:{ha2}")
    else:
        response = _h(alg, f"{ha1}:{ch.nonce}:{ha2}")
    user = _h(alg, f"{username}:{ch.realm}") if ch.userhash else username
    parts = [f"username={_quote(user)}", f"realm={_quote(ch.realm)}", f"uri={_quote(uri)}",
             f"algorithm={alg}", f"nonce={_quote(ch.nonce)}"]
    if ch.qop:
        parts += [f"nc={ncv}", f"cnonce={_quote(cnonce)}", f"qop={ch.qop}"]
    parts.append(f"response={_quote(response)}")
    if ch.opaque is not None:
        parts.append(f"opaque={_quote(ch.opaque)}")
    if ch.userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)

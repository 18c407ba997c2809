"""Checks on a job's `callback_url` at submission: `https://` only, and never a private address.

The host is resolved here, so a public name pointing at a private, loopback, link-local or metadata address
is refused too (delivery resolves again and checks again: a name can change between the two).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from medialens_shared.errors import RequestValidationFailed

#: Seconds the resolution of a callback host may take before the submission is refused.
RESOLVE_TIMEOUT_S = 5.0


def _refuse(message: str) -> RequestValidationFailed:
    return RequestValidationFailed(
        message, details=[{"loc": ["body", "callback_url"], "msg": message, "type": "value_error"}]
    )


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_callback_url(url: str, *, allow_http: bool, allow_private: bool) -> None:
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError as exc:  # an unclosed IPv6 bracket, a bad port
        raise _refuse(f"callback_url is not a valid URL ({exc}).") from exc
    if parts.scheme not in schemes or not parts.hostname:
        raise _refuse(f"callback_url must be an absolute {' or '.join(schemes)}:// URL.")
    if allow_private:
        return
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):  # a slow resolver must not hold the submission
            infos = await loop.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a name IDNA refuses, e.g. "a..b"
        raise _refuse(f"callback_url's host {parts.hostname!r} does not resolve.") from exc
    except TimeoutError as exc:
        raise _refuse(
            f"callback_url's host {parts.hostname!r} did not resolve within {RESOLVE_TIMEOUT_S:g} s."
        ) from exc
    for *_, sockaddr in infos:
        if not is_public(str(sockaddr[0])):
            raise _refuse(
                f"callback_url's host {parts.hostname!r} is or resolves to a non-public address; "
                "webhooks are only sent to public addresses."
            )

"""Checks on a job's `callback_url` at submission: `https://` only, and never a private address.

The host is resolved here, so a public name pointing at a private, loopback, link-local or metadata address
is refused too (delivery resolves again and checks again: a name can change between the two).

The URL must also be one httpx sends as written: no control character or whitespace (which `urlsplit`
quietly drops or keeps but httpx refuses or percent-encodes), and a host the resolver takes (valid IDNA,
labels of 1 to 63 characters). That holds even where private addresses are allowed and nothing is resolved
here: a URL accepted here that cannot be sent would only fail at delivery, long after the submitter left.
`parse_callback_url` is the one reading of the URL; the dispatcher uses it too, so both see the same host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import httpx

from medialens_shared.errors import RequestValidationFailed

#: Seconds the resolution of a callback host may take before the submission is refused.
RESOLVE_TIMEOUT_S = 5.0


class BadCallbackURL(ValueError):
    """A callback_url that cannot be sent to as written; the message says why, to the submitter."""


def _refuse(message: str) -> RequestValidationFailed:
    return RequestValidationFailed(
        message, details=[{"loc": ["body", "callback_url"], "msg": message, "type": "value_error"}]
    )


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def parse_callback_url(url: str, *, allow_http: bool) -> httpx.URL:
    """`url` as httpx sends it: an absolute URL of an allowed scheme whose host (`raw_host`, ASCII, IDNA
    already applied) a resolver takes; `BadCallbackURL` saying why not."""
    schemes = ("https", "http") if allow_http else ("https",)
    if any(char.isspace() or not char.isprintable() for char in url):
        raise BadCallbackURL("callback_url must not contain control characters or whitespace.")
    try:
        _ = urlsplit(url).port  # raises for a port that is not a number in 0..65535 (httpx takes 99999)
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:  # an unclosed IPv6 bracket, a bad port, a bad IDNA name
        raise BadCallbackURL(f"callback_url is not a valid URL ({exc}).") from exc
    if parsed.scheme not in schemes or not parsed.raw_host:
        raise BadCallbackURL(f"callback_url must be an absolute {' or '.join(schemes)}:// URL.")
    host = parsed.raw_host.decode("ascii")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host.encode("idna")  # what getaddrinfo does with it: refuses an empty or too long label
        except UnicodeError as exc:
            raise BadCallbackURL(f"callback_url's host {host!r} is not a valid host name.") from exc
    return parsed


async def addresses_of(url: httpx.URL) -> list[str]:
    """The distinct addresses `url`'s host resolves to (for its port, or its scheme's), in the resolver's
    order; the one resolution of a callback host, at submission and at delivery."""
    port = url.port or (443 if url.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(
        url.raw_host.decode("ascii"), port, type=socket.SOCK_STREAM
    )
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in infos))


async def check_callback_url(url: str, *, allow_http: bool, allow_private: bool) -> None:
    try:
        parsed = parse_callback_url(url, allow_http=allow_http)
    except BadCallbackURL as exc:
        raise _refuse(str(exc)) from exc
    if allow_private:
        return
    host = parsed.raw_host.decode("ascii")
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):  # a slow resolver must not hold the submission
            addresses = await addresses_of(parsed)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a name IDNA refuses, e.g. "a..b"
        raise _refuse(f"callback_url's host {host!r} does not resolve.") from exc
    except TimeoutError as exc:
        message = f"callback_url's host {host!r} did not resolve within {RESOLVE_TIMEOUT_S:g} s."
        raise _refuse(message) from exc
    if not all(is_public(address) for address in addresses):
        raise _refuse(
            f"callback_url's host {host!r} is or resolves to a non-public address; "
            "webhooks are only sent to public addresses."
        )

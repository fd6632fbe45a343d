"""Outbound HTTP that cannot be turned against the server's own network (SSRF guard).

Every request the server makes for a client (image URLs, webhooks) resolves the host once,
refuses addresses that are not public unless the operator allowed them, and connects to the
very address it checked: a DNS answer that changes between check and connect changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
"""Redirect hops followed per fetch, each one checked like the first URL."""

_ALWAYS_REFUSED = (
    ipaddress.ip_network("0.0.0.0/8"),  # "this network": 0.0.0.0 reaches the host itself
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT shared space
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64: maps to any IPv4 address, private ones too
    ipaddress.ip_network("2002::/16"),  # 6to4: embeds any IPv4 address
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
)


class UrlRefused(httpx.TransportError):
    """The URL is not http(s) or leads to an address this server does not reach for clients.

    An `httpx.TransportError`, so callers treat it as any other failed connection and cannot
    tell a refused address from a closed port."""


@dataclass(frozen=True)
class UrlPolicy:
    """Which non-public networks and hosts outbound requests may reach (default: none)."""

    networks: tuple[IpNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    """Host names allowed whatever they resolve to (lower case)."""

    @classmethod
    def parse(cls, entries: Iterable[str]) -> UrlPolicy:
        """A policy from CIDRs (`10.0.0.0/8`, `::1`) and host names (`images.internal`)."""
        networks: list[IpNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows(self, address: IpAddress) -> bool:
        """Whether requests may connect to `address`."""
        forms = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            forms.append(address.ipv4_mapped)
        if any(
            form in net for form in forms for net in self.networks if form.version == net.version
        ):
            return True
        return all(_is_public(form) for form in forms)


def _is_public(address: IpAddress) -> bool:
    if any(address in net for net in _ALWAYS_REFUSED if net.version == address.version):
        return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def resolve_checked(policy: UrlPolicy, url: httpx.URL) -> str:
    """The address to connect to for `url`, once its scheme, host and every address it
    resolves to pass `policy`; `UrlRefused` otherwise."""
    if url.scheme not in ("http", "https") or not url.host:
        raise UrlRefused("not an http(s) URL")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.host, port, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        raise UrlRefused("host does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise UrlRefused("host does not resolve")
    if url.host.lower().rstrip(".") not in policy.hosts and not all(
        policy.allows(a) for a in addresses
    ):
        # All or nothing: a host that also resolves to an internal address is refused.
        raise UrlRefused("address not allowed")
    return str(addresses[0])


class _GuardedTransport(httpx.AsyncBaseTransport):
    """Sends each request (each redirect hop too) to the checked address of its host."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = httpx.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        address = await resolve_checked(self._policy, request.url)
        # The Host header (set by the client from the URL) and SNI keep the name; the
        # connection goes to the address that was checked.
        pinned = httpx.Request(
            request.method,
            request.url.copy_with(host=address),
            headers=request.headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": request.url.raw_host.decode("ascii")},
        )
        return await self._inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self._inner.aclose()


def guarded_client(policy: UrlPolicy, timeout_s: float, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose every request and redirect hop passes `policy` (at most
    `MAX_REDIRECTS` hops); a refused URL raises `UrlRefused`, an `httpx.TransportError`."""
    return httpx.AsyncClient(
        transport=_GuardedTransport(policy),
        timeout=timeout_s,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
        **kwargs,
    )


class TooLarge(Exception):
    """The body is larger than allowed."""


class BadStatus(Exception):
    """A server that was allowed and reached answered other than 200."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


async def fetch_url(policy: UrlPolicy, url: str, timeout_s: float, max_bytes: int) -> bytes:
    """The body of a GET of `url` through the guard, all within `timeout_s` in total.

    Raises `TooLarge` past `max_bytes`, `BadStatus` for an answer other than 200;
    `httpx.HTTPError` (a refused URL included) or `TimeoutError` for anything else."""
    async with asyncio.timeout(timeout_s):
        async with (
            guarded_client(policy, timeout_s, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise BadStatus(response.status_code)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge
                chunks.append(chunk)
            return b"".join(chunks)


async def check_url(policy: UrlPolicy, url: str) -> bool:
    """Whether `url` is http(s) and its host resolves only to addresses `policy` allows."""
    try:
        await resolve_checked(policy, httpx.URL(url))
    except (UrlRefused, httpx.InvalidURL):
        return False
    return True

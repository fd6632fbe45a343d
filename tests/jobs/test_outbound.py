"""The SSRF guard, probed with real servers on loopback: refused unless the operator allows it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.inputs import fetch_bytes
from sdserve.jobs.outbound import MAX_REDIRECTS, UrlPolicy, check_url, guarded_client
from tests.helpers import free_port

BODY = b"image bytes"
PUBLIC_ONLY = UrlPolicy()
LOOPBACK = UrlPolicy.parse(["127.0.0.0/8", "::1"])
REFUSED = "init_image: could not fetch the image from this URL"


class _Handler(BaseHTTPRequestHandler):
    """`/image` answers BODY; `/to/URL` redirects to URL; `/hop/N` redirects N more times;
    `/trickle` sends a byte every 0.5 s; POSTs answer 200."""

    def do_GET(self) -> None:
        if self.path.startswith("/to/"):
            self._redirect(self.path.removeprefix("/to/"))
        elif self.path.startswith("/hop/"):
            left = int(self.path.removeprefix("/hop/"))
            self._redirect("/image" if left == 0 else f"/hop/{left - 1}")
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
        else:
            self.send_response(200)
            self.send_header("content-length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("location", location)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A server on every loopback address (127.0.0.1 and ::1) of one port."""
    server = _DualStackServer(("::", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _fetch(url: str, policy: UrlPolicy, timeout_s: float = 5) -> bytes:
    return asyncio.run(fetch_bytes("init_image", url, timeout_s, 1_000_000, policy))


def _probes(port: int) -> list[str]:
    closed = free_port()
    return [
        f"http://127.0.0.1:{port}/image",  # open port
        f"http://127.0.0.1:{closed}/image",  # closed port
        f"http://localhost:{port}/image",
        f"http://[::1]:{port}/image",
        f"http://0.0.0.0:{port}/image",
        f"http://[::ffff:127.0.0.1]:{port}/image",
        f"http://2130706433:{port}/image",  # 127.0.0.1 as one decimal number
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/image",
        "http://100.64.0.1/image",
        "http://[fe80::1]/image",
        f"ftp://127.0.0.1:{port}/image",
        "file:///etc/passwd",
        "http://[::1/broken",
    ]


def test_every_non_public_address_is_refused_with_one_message(port: int) -> None:
    for url in _probes(port):
        with pytest.raises(InvalidInput) as refused:
            _fetch(url, PUBLIC_ONLY)
        assert str(refused.value) == REFUSED, url


def test_an_allowed_network_is_fetched(port: int) -> None:
    assert _fetch(f"http://127.0.0.1:{port}/image", LOOPBACK) == BODY
    assert _fetch(f"http://[::1]:{port}/image", LOOPBACK) == BODY
    assert _fetch(f"http://localhost:{port}/image", LOOPBACK) == BODY


def test_an_allowed_host_name_is_fetched(port: int) -> None:
    assert _fetch(f"http://localhost:{port}/image", UrlPolicy.parse(["localhost"])) == BODY


def test_every_redirect_hop_is_checked(port: int) -> None:
    # The first hop is allowed (only 127.0.0.1); the redirect leads to ::1, which is not.
    only_v4 = UrlPolicy.parse(["127.0.0.1/32"])
    assert _fetch(f"http://127.0.0.1:{port}/to/http://127.0.0.1:{port}/image", only_v4) == BODY
    with pytest.raises(InvalidInput, match=f"^{REFUSED}$"):
        _fetch(f"http://127.0.0.1:{port}/to/http://[::1]:{port}/image", only_v4)


def test_redirects_are_capped(port: int) -> None:
    assert _fetch(f"http://127.0.0.1:{port}/hop/{MAX_REDIRECTS - 1}", LOOPBACK) == BODY
    with pytest.raises(InvalidInput, match=f"^{REFUSED}$"):
        _fetch(f"http://127.0.0.1:{port}/hop/{MAX_REDIRECTS}", LOOPBACK)


def test_a_trickling_server_is_cut_at_the_total_time(port: int) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=f"^{REFUSED}$"):
        _fetch(f"http://127.0.0.1:{port}/trickle", LOOPBACK, timeout_s=1.5)
    assert time.monotonic() - started < 3


def test_a_body_over_the_limit_is_refused(port: int) -> None:
    with pytest.raises(InvalidInput, match="larger than 4 bytes"):
        asyncio.run(fetch_bytes("mask", f"http://127.0.0.1:{port}/image", 5, 4, LOOPBACK))


def test_webhook_urls_are_checked(port: int) -> None:
    url = f"http://127.0.0.1:{port}/hook"
    assert not asyncio.run(check_url(PUBLIC_ONLY, url))
    assert not asyncio.run(check_url(PUBLIC_ONLY, "not a url"))
    assert asyncio.run(check_url(LOOPBACK, url))


def test_the_guarded_client_refuses_like_a_closed_port(port: int) -> None:
    async def post(policy: UrlPolicy) -> int:
        async with guarded_client(policy, 5) as client:
            return (await client.post(f"http://127.0.0.1:{port}/hook", json={})).status_code

    assert asyncio.run(post(LOOPBACK)) == 200
    with pytest.raises(httpx.TransportError):
        asyncio.run(post(PUBLIC_ONLY))

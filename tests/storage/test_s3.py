"""S3ImageStore against a real S3-compatible server (moto's standalone server in a subprocess)."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3  # type: ignore[import-untyped]
import httpx
import pytest

from sdserve.storage.factory import open_image_store
from sdserve.storage.s3 import MAX_PRESIGN_S, S3ImageStore
from tests.s3server import moto_s3_server, s3_env

BUCKET = "sdserve-test"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\x00\xff" * 100


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """One moto server for the module, with fake credentials in this process's environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_env().items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        with moto_s3_server() as url:
            S3ImageStore.from_url(f"s3://{BUCKET}?endpoint_url={url}").ensure_bucket()
            yield url


@pytest.fixture
def store(endpoint: str) -> S3ImageStore:
    return S3ImageStore.from_url(f"s3://{BUCKET}?endpoint_url={endpoint}")


@pytest.fixture
def raw(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def job() -> str:
    return uuid.uuid4().hex


def listed(raw: Any, prefix: str) -> list[str]:
    response = raw.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for obj in response.get("Contents", []))


def test_put_read_round_trip_is_byte_exact(store: S3ImageStore, raw: Any) -> None:
    job_id = job()
    key = store.put(job_id, 0, PNG)
    assert key == f"{job_id}/0.png"
    assert store.read(key) == PNG
    head = raw.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)


def test_rerun_overwrites_instead_of_duplicating(store: S3ImageStore, raw: Any) -> None:
    job_id = job()
    store.put(job_id, 0, b"first")
    key = store.put(job_id, 0, b"second")
    assert store.read(key) == b"second"
    assert listed(raw, f"{job_id}/") == [key]


def test_read_missing_or_malformed_key_is_none(store: S3ImageStore) -> None:
    job_id = job()
    store.put(job_id, 0, PNG)
    assert store.read(f"{job_id}/1.png") is None
    assert store.read("no-such-job/0.png") is None
    assert store.read("../x") is None
    assert store.read(f"{job_id}/../{job_id}/0.png") is None
    assert store.read(f"/{job_id}/0.png") is None
    assert store.read("") is None


def test_objects_land_under_the_prefix(endpoint: str, raw: Any) -> None:
    store = S3ImageStore.from_url(f"s3://{BUCKET}/outputs/v1/?endpoint_url={endpoint}")
    assert store.prefix == "outputs/v1"
    job_id = job()
    key = store.put(job_id, 2, PNG)
    assert key == f"{job_id}/2.png"  # keys never carry the prefix
    assert listed(raw, f"outputs/v1/{job_id}/") == [f"outputs/v1/{job_id}/2.png"]
    assert listed(raw, f"{job_id}/") == []
    assert store.read(key) == PNG
    # an unprefixed store over the same bucket does not see it
    assert S3ImageStore.from_url(f"s3://{BUCKET}?endpoint_url={endpoint}").read(key) is None


def test_delete_job_removes_only_that_job(endpoint: str, raw: Any) -> None:
    store = S3ImageStore.from_url(f"s3://{BUCKET}/del?endpoint_url={endpoint}")
    job_a, job_b = job(), job()
    keys_a = [store.put(job_a, i, PNG) for i in range(3)]
    key_b = store.put(job_b, 0, PNG)
    assert len(listed(raw, f"del/{job_a}/")) == 3
    store.delete_job(job_a)
    assert listed(raw, f"del/{job_a}/") == []
    assert all(store.read(k) is None for k in keys_a)
    assert listed(raw, f"del/{job_b}/") == [f"del/{key_b}"]
    assert store.read(key_b) == PNG
    store.delete_job(job_a)  # again: nothing left, no error
    store.delete_job(job())  # unknown job: no error
    assert store.read(key_b) == PNG


def test_delete_job_does_not_touch_jobs_sharing_a_name_prefix(store: S3ImageStore) -> None:
    base = job()
    key_long = store.put(base + "x", 0, PNG)
    store.put(base, 0, PNG)
    store.delete_job(base)
    assert store.read(key_long) == PNG


def test_delete_job_paginates_and_batches(store: S3ImageStore, raw: Any) -> None:
    # 1000 keys per page/request in production; 2 here so 5 objects need 3 list pages and 3
    # DeleteObjects calls without uploading 1000+ objects
    assert store.delete_batch == 1000
    store.delete_batch = 2
    job_id, other = job(), job()
    for i in range(5):
        store.put(job_id, i, PNG)
    store.put(other, 0, PNG)
    store.delete_job(job_id)
    assert listed(raw, f"{job_id}/") == []
    assert listed(raw, f"{other}/") == [f"{other}/0.png"]


def test_direct_url_serves_the_png(store: S3ImageStore) -> None:
    key = store.put(job(), 0, PNG)
    url = store.direct_url(key, time.time() + 600)
    assert url is not None
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200
    assert r.content == PNG
    assert r.headers["content-type"] == "image/png"
    assert store.direct_url("../x", time.time() + 600) is None


def _sigv4_expiry(url: str, secret: str) -> float:
    """Check a presigned URL's SigV4 signature independently of botocore and return the Unix time
    it stops being valid. The expiry is signed, so no client can stretch it."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = query.pop("X-Amz-Signature")
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-SignedHeaders"] == "host"
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    canonical = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = query["X-Amz-Credential"].split("/", 1)[1]
    day, region, service, _ = scope.split("/")
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            query["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    k = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    assert hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest() == signature
    signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    return signed_at + int(query["X-Amz-Expires"])


def test_direct_url_expiry_is_signed_and_bounded(store: S3ImageStore) -> None:
    # moto 5 does not check presigned-URL signatures or expiry (it serves an expired link with
    # 200), so the expiry real S3 enforces is checked here from the signed URL itself.
    secret = s3_env()["AWS_SECRET_ACCESS_KEY"]
    key = store.put(job(), 0, PNG)
    now = time.time()
    in_an_hour = store.direct_url(key, now + 3600)
    assert in_an_hour is not None
    assert abs(_sigv4_expiry(in_an_hour, secret) - (now + 3600)) <= 2
    soon = store.direct_url(key, time.time() + 1)
    assert soon is not None
    assert _sigv4_expiry(soon, secret) <= time.time() + 2
    past = store.direct_url(key, time.time() - 100)  # never an invalid ExpiresIn
    assert past is not None and "X-Amz-Expires=1&" in past
    far = store.direct_url(key, time.time() + 30 * 86400)
    assert far is not None
    assert f"X-Amz-Expires={MAX_PRESIGN_S}&" in far
    assert _sigv4_expiry(far, secret) <= time.time() + MAX_PRESIGN_S + 1
    stretched = far.replace(f"X-Amz-Expires={MAX_PRESIGN_S}", f"X-Amz-Expires={MAX_PRESIGN_S * 2}")
    with pytest.raises(AssertionError):
        _sigv4_expiry(stretched, secret)


def test_ensure_bucket_creates_a_missing_bucket_once(endpoint: str, raw: Any) -> None:
    name = f"fresh-{uuid.uuid4().hex[:12]}"
    store = S3ImageStore.from_url(f"s3://{name}?endpoint_url={endpoint}")
    assert name not in {b["Name"] for b in raw.list_buckets()["Buckets"]}
    store.ensure_bucket()
    store.ensure_bucket()
    assert name in {b["Name"] for b in raw.list_buckets()["Buckets"]}
    assert store.read(store.put("j1", 0, PNG)) == PNG


def test_open_image_store_picks_s3(endpoint: str, tmp_path: Path) -> None:
    store = open_image_store(f"s3://{BUCKET}/p?endpoint_url={endpoint}", tmp_path / "images")
    assert isinstance(store, S3ImageStore)
    assert store.read(store.put(job(), 0, PNG)) == PNG
    assert not (tmp_path / "images").exists()


def test_from_url_parses_bucket_prefix_endpoint_region() -> None:
    store = S3ImageStore.from_url(
        "s3://my-bucket/a/b/?endpoint_url=http://minio:9000&region=eu-west-3"
    )
    assert (store.bucket, store.prefix) == ("my-bucket", "a/b")
    assert (store.endpoint_url, store.region) == ("http://minio:9000", "eu-west-3")
    assert store.addressing_style == "path"  # the default with a custom endpoint
    plain = S3ImageStore.from_url("s3://my-bucket")
    assert (plain.prefix, plain.endpoint_url, plain.region) == ("", None, None)
    assert plain.addressing_style is None
    virtual = S3ImageStore.from_url(
        "s3://my-bucket//x//?endpoint_url=https://s3.example.com&addressing_style=virtual"
    )
    assert (virtual.prefix, virtual.addressing_style) == ("x", "virtual")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/prefix", "s3://"),
        ("/local/dir", "s3://"),
        ("s3:///prefix", "no bucket"),
        ("s3://", "no bucket"),
        ("s3://bucket?endpoint=http://x", "'endpoint'"),
        ("s3://bucket?region=us-east-1&acl=public", "'acl'"),
        ("s3://bucket?region=", "'region'"),
        ("s3://bucket?region=a&region=b", "'region'"),
        ("s3://bucket?endpoint_url=minio:9000", "'endpoint_url'"),
        ("s3://bucket?addressing_style=dns", "addressing_style"),
        ("s3://KEY:SECRET@bucket", "credentials"),
    ],
)
def test_from_url_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        S3ImageStore.from_url(url)
    if "'acl'" in message or "'endpoint'" in message:
        assert "endpoint_url, region, addressing_style" in str(info.value)

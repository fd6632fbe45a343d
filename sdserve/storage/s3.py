"""Images in an S3-compatible bucket (AWS, MinIO, moto, ...), handed to clients as presigned links.

Credentials come from boto3's usual chain (environment, profiles, instance roles), never from the
`--storage` URL.
"""

from __future__ import annotations

import time
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from sdserve.storage.base import image_key
from sdserve.storage.location import ADDRESSING_STYLES, parse_s3_url

MAX_PRESIGN_S = 7 * 24 * 3600  # the SigV4 maximum
DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})


def _valid_job_id(job_id: str) -> bool:
    return bool(job_id) and "/" not in job_id and "\\" not in job_id and job_id not in (".", "..")


def _valid_key(key: str) -> bool:
    return bool(key) and ".." not in key and not key.startswith("/") and "\\" not in key


class S3ImageStore:
    """Keys look like `<job_id>/<index>.png`; objects live at `<prefix>/<key>` in `bucket`."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str | None = None,
    ) -> None:
        """Build the client (no network); path-style addressing by default with `endpoint_url`."""
        if addressing_style is not None and addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style must be one of {', '.join(ADDRESSING_STYLES)}, "
                f"not {addressing_style!r}"
            )
        self.bucket = bucket
        self.prefix = "/".join(part for part in prefix.split("/") if part)
        self.endpoint_url = endpoint_url
        self.region = region
        if addressing_style is None and endpoint_url is not None:
            addressing_style = "path"  # MinIO, moto and most self-hosted servers need it
        self.addressing_style = addressing_style
        self.delete_batch = DELETE_BATCH  # keys per list page and per DeleteObjects call
        config = Config(
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": addressing_style or "auto"},
        )
        # boto3 ships no type information; the client is an untyped botocore S3 client.
        self._client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    @classmethod
    def from_url(cls, url: str) -> S3ImageStore:
        """The store a `--storage` URL names (storage/location.py says which URLs do)."""
        where = parse_s3_url(url)
        return cls(
            where.bucket,
            where.prefix,
            endpoint_url=where.endpoint_url,
            region=where.region,
            addressing_style=where.addressing_style,
        )

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (the store itself never creates it)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) not in _NO_BUCKET_CODES:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    def put(self, job_id: str, index: int, data: bytes) -> str:
        """Upload image `index` of a job (overwriting a re-run's) and return its key."""
        if not _valid_job_id(job_id):
            raise ValueError(f"malformed job id {job_id!r}")
        key = image_key(job_id, index)
        self._client.put_object(
            Bucket=self.bucket, Key=self._object_key(key), Body=data, ContentType="image/png"
        )
        return key

    def read(self, key: str) -> bytes | None:
        """The bytes of a key, or None when the key is malformed or the object is gone."""
        if not _valid_key(key):
            return None
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _MISSING_CODES:
                return None
            raise
        body = response["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def delete_job(self, job_id: str) -> None:
        """Delete every object under the job's folder, listing and deleting 1000 at a time."""
        if not _valid_job_id(job_id):
            return
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._object_key(f"{job_id}/"),
            PaginationConfig={"PageSize": self.delete_batch},
        )
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        for start in range(0, len(keys), self.delete_batch):
            batch = keys[start : start + self.delete_batch]
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise RuntimeError(
                    f"S3 refused to delete {len(errors)} object(s) of job {job_id}, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def direct_url(self, key: str, expires_at: float) -> str | None:
        """A presigned GET link valid until `expires_at` (at least 1 s, at most 7 days),
        or None for a malformed key."""
        if not _valid_key(key):
            return None
        expires_in = min(MAX_PRESIGN_S, max(1, int(expires_at - time.time())))
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=expires_in,
        )
        return url

    def __repr__(self) -> str:
        return (
            f"S3ImageStore(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r}, region={self.region!r})"
        )

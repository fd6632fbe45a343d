"""Where `--storage` puts images: an S3 URL read without boto3, so a bad one is refused with
the other settings, before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

URL_PARAMS = ("endpoint_url", "region", "addressing_style")
ADDRESSING_STYLES = ("path", "virtual")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str | None
    addressing_style: str | None


def parse_s3_url(url: str) -> S3Location:
    """Read `s3://BUCKET[/PREFIX][?endpoint_url=...&region=...&addressing_style=path|virtual]`;
    a ValueError says what is wrong with any other."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise ValueError(
            f"storage URL must start with s3:// (without --storage, images go to the data"
            f" dir's images/ folder), got {url!r}"
        )
    if "@" in parts.netloc:
        raise ValueError(
            "storage URL must not carry credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or a profile / instance role) instead"
        )
    bucket = parts.netloc
    if not bucket:
        raise ValueError(f"storage URL names no bucket: {url!r} (expected s3://BUCKET[/PREFIX])")
    if parts.fragment:
        raise ValueError(f"storage URL must not have a #fragment: {url!r}")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_PARAMS:
            raise ValueError(
                f"unknown storage URL parameter {name!r}; allowed: {', '.join(URL_PARAMS)}"
            )
        if name in params:
            raise ValueError(f"storage URL parameter {name!r} given twice")
        if not value:
            raise ValueError(f"storage URL parameter {name!r} is empty")
        params[name] = value
    endpoint_url = params.get("endpoint_url")
    if endpoint_url is not None:
        endpoint = urlsplit(endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise ValueError(
                f"storage URL parameter 'endpoint_url' must be an http(s) URL, got {endpoint_url!r}"
            )
    style = params.get("addressing_style")
    if style is not None and style not in ADDRESSING_STYLES:
        raise ValueError(
            f"storage URL parameter 'addressing_style' must be one of"
            f" {', '.join(ADDRESSING_STYLES)}, got {style!r}"
        )
    return S3Location(
        bucket,
        parts.path,
        endpoint_url=endpoint_url,
        region=params.get("region"),
        addressing_style=params.get("addressing_style"),
    )

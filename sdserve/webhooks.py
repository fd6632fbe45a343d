"""Webhook delivery from the durable outbox.

Every try is signed per the Standard Webhooks spec (`webhook-id`, the event's, the same in every
try; `webhook-timestamp`; `webhook-signature`). A failed try is retried after the next wait of
the schedule, varied by up to 20% so a receiver coming back is not hit by every sender at once,
until the horizon after the event; then the delivery is kept as failed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

from sdserve import metrics
from sdserve.jobs.models import Job
from sdserve.jobs.outbound import UrlPolicy, guarded_client
from sdserve.jobs.store import JobStore, WebhookDelivery

log = logging.getLogger(__name__)

_POLL_S = 0.5
_BATCH = 20
_JITTER = 0.2
SECRET_PREFIX = "whsec_"

RenderJob = Callable[[Job], dict[str, Any]]


@dataclass(frozen=True)
class RetryPolicy:
    waits_s: Sequence[float]
    """Seconds before each retry; the last repeats."""
    horizon_s: float
    """No try starts later than this after the event."""

    def next_try_at(self, delivery: WebhookDelivery, now: float) -> float | None:
        """When to try again after `delivery`'s failed try, or None once past the horizon."""
        wait = self.waits_s[min(delivery.attempts, len(self.waits_s) - 1)]
        at = now + wait * random.uniform(1 - _JITTER, 1 + _JITTER)
        return at if at <= delivery.created_at + self.horizon_s else None


def load_webhook_secret(configured: str | None, data_dir: Path) -> str:
    """The configured `whsec_` key, else one generated once and kept in the data directory."""
    if configured:
        return configured
    path = data_dir / "webhook-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode())
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def signed_post(
    signer: Webhook, delivery: WebhookDelivery, payload: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one try: the exact bytes that were signed."""
    body = json.dumps(payload, separators=(",", ":"))
    now = datetime.datetime.now(tz=datetime.UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(delivery.event_id, now, body),
    }
    return body.encode(), headers


async def deliver(
    client: httpx.AsyncClient,
    store: JobStore,
    delivery: WebhookDelivery,
    render: RenderJob,
    signer: Webhook,
    retry: RetryPolicy,
) -> None:
    """POST one job's answer to its webhook; record success, a retry, or failure for good."""
    job = await asyncio.to_thread(store.get, delivery.job_id)
    if job is None:  # expired meanwhile: nothing left to report
        await asyncio.to_thread(store.webhook_attempted, delivery.id, True, None)
        return
    try:
        # Off the event loop: a payload with base64 images reads them from their store.
        payload = await asyncio.to_thread(render, job)
        body, headers = signed_post(signer, delivery, payload)
        response = await client.post(delivery.url, content=body, headers=headers)
        delivered = response.is_success
        reason = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        delivered, reason = False, type(exc).__name__
    next_at = None if delivered else retry.next_try_at(delivery, time.time())
    metrics.webhook_tried("delivered" if delivered else "failed" if next_at is None else "retry")
    if not delivered:
        tries = delivery.attempts + 1
        if next_at is None:
            log.warning("webhook for job %s failed (%s) %d times; giving up", job.id, reason, tries)
        else:
            log.warning(
                "webhook for job %s failed (%s), try %d; again in %.0f s",
                job.id, reason, tries, next_at - time.time(),
            )  # fmt: skip
    error = None if delivered else reason
    await asyncio.to_thread(store.webhook_attempted, delivery.id, delivered, next_at, error)


async def run_webhooks(
    store: JobStore,
    render: RenderJob,
    secret: str,
    retry: RetryPolicy,
    timeout_s: float,
    urls: UrlPolicy | None = None,
) -> None:
    """Deliver due webhooks until cancelled, only to addresses `urls` allows (default:
    public ones); a refused address fails the try like a closed port."""
    signer = Webhook(secret)
    async with guarded_client(urls or UrlPolicy(), timeout_s) as client:
        while True:
            try:
                due = await asyncio.to_thread(store.due_webhooks, time.time(), _BATCH)
                await asyncio.gather(
                    *(deliver(client, store, d, render, signer, retry) for d in due)
                )
            except Exception:
                log.exception("webhook delivery pass failed; trying again later")
            await asyncio.sleep(_POLL_S)

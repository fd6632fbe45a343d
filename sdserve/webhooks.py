"""Webhook delivery from the durable outbox, retried with exponential backoff."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from sdserve.jobs.models import Job
from sdserve.jobs.outbound import UrlPolicy, guarded_client
from sdserve.jobs.store import JobStore, WebhookDelivery

log = logging.getLogger(__name__)

_POLL_S = 0.5
_BATCH = 20

RenderJob = Callable[[Job], dict[str, Any]]


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after `attempts` failures: 1, 2, 4, ... capped at 5 min."""
    return float(min(2**attempts, 300))


async def deliver(
    client: httpx.AsyncClient,
    store: JobStore,
    delivery: WebhookDelivery,
    render: RenderJob,
    max_attempts: int,
) -> None:
    """POST one job's status to its webhook; record success or schedule a retry."""
    job = await asyncio.to_thread(store.get, delivery.job_id)
    if job is None:
        await asyncio.to_thread(store.webhook_attempted, delivery.id, False, None)
        return
    try:
        # Off the event loop: a payload with base64 images reads them from their store.
        payload = await asyncio.to_thread(render, job)
        response = await client.post(delivery.url, json=payload)
        delivered = response.is_success
        reason = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        delivered, reason = False, type(exc).__name__
    tries = delivery.attempts + 1
    next_at = None if tries >= max_attempts else time.time() + backoff_s(delivery.attempts)
    if not delivered:
        log.warning(
            "webhook for job %s failed (%s), try %d/%d", job.id, reason, tries, max_attempts
        )
    await asyncio.to_thread(store.webhook_attempted, delivery.id, delivered, next_at)


async def run_webhooks(
    store: JobStore,
    render: RenderJob,
    max_attempts: int,
    timeout_s: float,
    urls: UrlPolicy | None = None,
) -> None:
    """Deliver due webhooks until cancelled, only to addresses `urls` allows (default:
    public ones); a refused address fails the try like a closed port."""
    async with guarded_client(urls or UrlPolicy(), timeout_s) as client:
        while True:
            try:
                due = await asyncio.to_thread(store.due_webhooks, time.time(), _BATCH)
                await asyncio.gather(
                    *(deliver(client, store, d, render, max_attempts) for d in due)
                )
            except Exception:
                log.exception("webhook delivery pass failed; trying again later")
            await asyncio.sleep(_POLL_S)

"""`sdserve generate --url`: a job through a running server's RunPod API, followed to its end."""

from __future__ import annotations

import base64
import time
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from sdserve.api.errors import ErrorBody
from sdserve.api.runpod_protocol import ImageOutput, JobBrief, JobState, Progress, RunPodInput
from sdserve.client.progress import StepProgress
from sdserve.client.request import BadInput, GenerationFailed, Output, option_of
from sdserve.jobs.models import JobStatus

POLL_S = 0.2
"""How often the job's status is read while it runs."""
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def generate_remote(
    url: str, api_key: str | None, endpoint: str, wire: RunPodInput, progress: StepProgress
) -> list[Output]:
    """The images of `wire` made by the server at `url` on `endpoint`: `POST /run`, then
    `GET /status` until the job ends; a Ctrl-C cancels the job."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=_TIMEOUT) as http:
            body = {"input": wire.model_dump(mode="json", exclude_unset=True)}
            answer = http.post(f"/v2/{endpoint}/run", json=body)
            job = JobBrief.model_validate_json(_accepted(answer).content)
            for warning in job.warnings or []:
                progress.warn(warning)
            try:
                state = _follow(http, endpoint, job.id, progress)
            except KeyboardInterrupt:
                http.post(f"/v2/{endpoint}/cancel/{job.id}")
                raise
            if not isinstance(state.output, list):
                raise GenerationFailed(f"job {job.id} completed without images")
            return [_image(http, base, item) for item in state.output]
    except httpx.HTTPError as exc:
        raise GenerationFailed(f"could not talk to the server at {url}: {exc}") from None
    except ValidationError as exc:
        raise GenerationFailed(f"{url} does not answer as an sdserve server: {exc}") from None


def _accepted(answer: httpx.Response) -> httpx.Response:
    """The answer to the submission, or the reason it was refused, naming the options."""
    if answer.status_code == 200:
        return answer
    body = _error(answer)
    message = body.error
    if answer.status_code == 400 and body.errors:
        raise BadInput([f"{option_of(e.field)}: {e.message}" for e in body.errors])
    if answer.status_code == 401:
        raise BadInput([f"--api-key: {message}"])
    if answer.status_code == 404:
        raise BadInput([f"--model: {message}"])
    raise GenerationFailed(f"the server refused the job ({answer.status_code}): {message}")


def _follow(http: httpx.Client, endpoint: str, job_id: str, progress: StepProgress) -> JobState:
    """The job's state once it has ended COMPLETED, telling `progress` how it goes meanwhile."""
    while True:
        answer = http.get(f"/v2/{endpoint}/status/{job_id}")
        if answer.status_code != 200:
            message = _error(answer).error
            raise GenerationFailed(f"could not read job {job_id} ({answer.status_code}): {message}")
        state = JobState.model_validate_json(answer.content)
        if state.status == JobStatus.COMPLETED:
            progress.finished()
            return state
        if state.status.is_final:
            reason = state.error or "no reason given"
            raise GenerationFailed(f"job {job_id} ended {state.status.value}: {reason}")
        if isinstance(state.output, Progress):
            done, _, total = state.output.progress.partition("/")
            progress.step(int(done), int(total))
        else:
            progress.waiting("queued" if state.status == JobStatus.IN_QUEUE else "starting")
        time.sleep(POLL_S)


def _image(http: httpx.Client, base: str, item: ImageOutput) -> Output:
    """An output image's PNG: downloaded from its URL, or decoded from base64."""
    if not item.image.startswith(("http://", "https://")):
        return Output(png=base64.b64decode(item.image), seed=item.seed)
    # The key goes only to the server itself, never to a storage host its links may name
    # (an S3 presigned link refuses a second credential anyway).
    same_origin = _origin(item.image) == _origin(base)
    answer = http.get(item.image) if same_origin else httpx.get(item.image, timeout=_TIMEOUT)
    if answer.status_code != 200:
        raise GenerationFailed(f"could not download {item.image} ({answer.status_code})")
    return Output(png=answer.content, seed=item.seed)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _error(answer: httpx.Response) -> ErrorBody:
    """An error answer as RunPod's dialect shapes it (any other: its text as the message)."""
    try:
        return ErrorBody.model_validate_json(answer.content)
    except ValidationError:
        return ErrorBody(error=answer.text or answer.reason_phrase)

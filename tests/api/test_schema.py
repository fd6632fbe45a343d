"""Schemathesis over the whole /openapi.json, on loopback: every call of every dialect answers only
the statuses its document lists, with the bodies it describes, and never a 5xx."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from sdserve.registry import DEMO_MODEL_DIR, NATIVE_SIZE
from tests.conftest import API_KEY
from tests.helpers import ServerProcess, free_port, running_server

EXAMPLES_PER_CALL = 8
"""Cases per operation (there are 48): a few hundred in all, under two minutes on two cores."""
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
COSTLY = {
    "num_inference_steps": 2, "num_outputs": 2, "num_images": 2, "samples": 2, "n": 2,
    "wait": 2000,
}  # fmt: skip
"""Fields that multiply a job's work or a call's wait, capped so that each generated call takes
a moment (the demo model runs 500 steps of 10 images in minutes); their own limits are tested
elsewhere."""
Operation = APIOperation[Any, Any, Any, Any]
GeneratedCase = Case[Any]
DEAD_URL = f"http://127.0.0.1:{free_port()}/nothing-listens-here"
"""What every generated URL becomes: the server only ever reaches loopback in this test."""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The demo model behind one key, at 2 steps and at most 256x256 unless a request asks for
    more; a small queue so generated jobs never pile up."""
    data_dir = tmp_path_factory.mktemp("data")
    models = data_dir.parent / "models.toml"
    models.write_text(
        f'[models.default]\nsource = "{DEMO_MODEL_DIR}"\nnative_size = {NATIVE_SIZE}\n'
        "size = 128\nmax_size = 256\nsteps = 2\nbuiltin = true\n"
    )
    env = {
        "SDSERVE_API_KEYS": API_KEY,
        "SDSERVE_MAX_QUEUE": "4",
        "SDSERVE_MODELSLAB_WAIT_S": "0",
        "SDSERVE_FETCH_TIMEOUT_S": "2",
        "SDSERVE_NSFW_CHECK": "false",
    }
    with running_server(data_dir, ["--models-file", str(models)], env) as server:
        yield server


def _tame(value: Any) -> Any:
    """`value` with costly numbers capped and every URL pointing at a closed loopback port."""
    if isinstance(value, dict):
        return {k: _cap(k, v) if k in COSTLY else _tame(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tame(v) for v in value]
    if isinstance(value, str) and "http" in value.lower():
        return DEAD_URL
    return value


def _cap(name: str, value: Any) -> Any:
    limit = COSTLY[name]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return limit if number > limit else value


def _send(case: GeneratedCase, keyed: bool, base_url: str) -> int:
    """Send `case` (with the key, and to the served model, when `keyed`); its status."""
    for name in ("endpoint", "model"):
        if keyed and name in case.path_parameters:
            case.path_parameters[name] = "default"
    headers = {"Authorization": f"Bearer {API_KEY}"} if keyed else {}
    if isinstance(case.body, dict):
        body = _tame(case.body)
        if keyed and case.operation.path.startswith("/api/"):
            body["key"] = API_KEY  # ModelsLab reads the key from the body first
        case.body = body
    case.query = _tame(case.query) if case.query else case.query
    response = case.call(base_url=base_url, headers=headers, timeout=60)
    case.validate_response(response, checks=CHECKS, headers=headers)
    return response.status_code


def _fuzz(operation: Operation, url: str, seen: Counter[int], failures: list[str]) -> None:
    """Send one operation's generated cases (valid and invalid), collecting what fails."""
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES_PER_CALL,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: the failing case is reported as sent
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, keyed=st.sampled_from([True, True, True, False]))
    def call(case: GeneratedCase, keyed: bool) -> None:
        # Collected, not raised: Hypothesis would replay a failing case, and the server's state
        # (its queue) has moved on by then.
        try:
            seen[_send(case, keyed, url)] += 1
        except FailureGroup as error:
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")

    call()


def test_every_call_answers_only_what_the_document_lists(fuzzed: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) > 40, "every dialect's calls are in the document"
    failures: list[str] = []
    seen: Counter[int] = Counter()
    for operation in operations:
        _fuzz(operation, fuzzed.url, seen, failures)
    assert not failures, "\n\n".join(failures)
    # The run got past the checks (jobs ran) and met the common refusals.
    assert {200, 400, 401, 404} <= set(seen), seen
    assert sum(seen.values()) >= EXAMPLES_PER_CALL * len(operations) // 2, seen


def test_every_submitting_call_declares_the_idempotency_key(fuzzed: ServerProcess) -> None:
    document = httpx.get(f"{fuzzed.url}/openapi.json").json()
    declaring = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }
    modes = ("text2img", "img2img", "inpaint")
    modelslab = [
        *(f"/api/v3/{m}" for m in modes),
        *(f"/api/v6/images/{m}" for m in modes),
        "/api/v4/dreambooth",
        "/api/v4/dreambooth/img2img",
        "/api/v4/dreambooth/inpaint",
    ]
    runpod = [f"/{v}/{{endpoint}}/{c}" for v in ("v1", "v2") for c in ("run", "runsync")]
    openai = [f"{b}/images/{c}" for b in ("/v1", "/v1/openai") for c in ("generations", "edits")]
    expected = {f"POST {p}" for p in [*modelslab, *runpod, *openai, "/v1/inference/{model}"]}
    assert declaring == expected

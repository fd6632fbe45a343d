"""The RunPod dialect end to end: a real server process, real HTTP, a tiny real pipeline."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import OTHER_KEY
from tests.helpers import (
    ServerProcess,
    assert_batched_matches_alone,
    image_from_output,
    link_expiry,
    png_data_uri,
    wait_for,
)

FAST = {"width": 128, "height": 128, "num_inference_steps": 3}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module")
def server(backend_server: ServerProcess) -> ServerProcess:
    """Every test here runs on both backends: embedded SQLite, and PostgreSQL with S3."""
    return backend_server


def run(client: httpx.Client, path: str = "/v2/default/run", **input: object) -> str:
    r = client.post(path, json={"input": {"prompt": "a red circle", **FAST, **input}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "IN_QUEUE" and set(body) == {"id", "status"}
    return str(body["id"])


def runsync(client: httpx.Client, endpoint: str = "default", **input: object) -> dict[str, object]:
    r = client.post(
        f"/v2/{endpoint}/runsync", json={"input": {"prompt": "a red circle", **FAST, **input}}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def first_image(client: httpx.Client, body: dict[str, object]) -> np.ndarray[Any, Any]:
    """Pixels of the first image of a COMPLETED status object."""
    assert body["status"] == "COMPLETED", body
    outputs = body["output"]
    assert isinstance(outputs, list)
    return image_from_output(client, outputs[0]["image"])


def test_run_then_status_returns_signed_png_urls(client: httpx.Client) -> None:
    job_id = run(client, seed=7, num_outputs=2)
    body = wait_for(client, f"/v2/default/status/{job_id}", FINAL)
    assert body["status"] == "COMPLETED", body
    assert body["delayTime"] >= 0 and body["executionTime"] > 0
    assert body["input"]["prompt"] == "a red circle"
    assert [o["seed"] for o in body["output"]] == [7, 8]
    for output in body["output"]:
        url = output["image"]
        # sdserve's own signed link, or the S3 store's presigned one
        assert url.startswith("http://127.0.0.1") and ("sig=" in url or "X-Amz-Signature=" in url)
        assert abs(link_expiry(url) - (time.time() + 1800)) < 60
        pixels = image_from_output(httpx.Client(), url)  # signed: no API key needed
        assert pixels.shape == (128, 128, 3)
        assert pixels.std() > 0
    if "sig=" in body["output"][0]["image"]:  # (the S3 test server does not check signatures)
        tampered = body["output"][0]["image"].replace("sig=", "sig=0")
        assert httpx.get(tampered).status_code == 404


@pytest.mark.parametrize("path", ["/v1/default", "/v2/stable-diffusion-v1"])
def test_v1_and_aliases_serve_the_default_model(client: httpx.Client, path: str) -> None:
    job_id = run(client, f"{path}/run")
    assert wait_for(client, f"{path}/status/{job_id}", FINAL)["status"] == "COMPLETED"
    # a job is reachable through any name of the same model, and POST /status works too
    assert client.post(f"/v2/default/status/{job_id}").json()["status"] == "COMPLETED"


def test_hosted_api_alias_with_slash(client: httpx.Client) -> None:
    body = runsync(client, "stabilityai/stable-diffusion-2-1")
    assert body["status"] == "COMPLETED"


def test_runsync_answers_with_the_result(client: httpx.Client) -> None:
    body = runsync(client, seed=3)
    assert body["status"] == "COMPLETED"
    assert body["output"][0]["seed"] == 3  # type: ignore[index]


def test_runsync_degrades_to_a_pollable_id(client: httpx.Client) -> None:
    r = client.post(
        "/v2/default/runsync?wait=0",
        json={"input": {"prompt": "slow", **FAST, "num_inference_steps": 40}},
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "status"} and body["status"] in ("IN_QUEUE", "IN_PROGRESS")
    done = wait_for(client, f"/v2/default/status/{body['id']}", FINAL)
    assert done["status"] == "COMPLETED"


def test_each_image_seed_reproduces_that_image(client: httpx.Client) -> None:
    batch = runsync(client, seed=1000, num_outputs=3)
    outputs = batch["output"]
    assert isinstance(outputs, list)
    assert [o["seed"] for o in outputs] == [1000, 1001, 1002]
    pixels = [image_from_output(client, o["image"]) for o in outputs]
    assert not np.array_equal(pixels[0], pixels[1])
    single = runsync(client, seed=1001, num_outputs=1)["output"]
    assert isinstance(single, list)
    assert_batched_matches_alone(pixels[1], image_from_output(client, single[0]["image"]))


def test_random_seed_is_reported_and_reproduces(client: httpx.Client) -> None:
    first = runsync(client)["output"]
    assert isinstance(first, list)
    seed = first[0]["seed"]
    again = runsync(client, seed=seed)["output"]
    assert isinstance(again, list)
    assert np.array_equal(
        image_from_output(client, first[0]["image"]), image_from_output(client, again[0]["image"])
    )


@pytest.mark.parametrize(
    "scheduler",
    ["DDIM", "DDPM", "DPM-M", "DPM-S", "EULER-A", "EULER-D", "HEUN", "IPNDM",
     "KDPM2-A", "KDPM2-D", "PNDM", "K-LMS", "KLMS", "euler-a"],
)  # fmt: skip
def test_every_scheduler_produces_an_image(client: httpx.Client, scheduler: str) -> None:
    body = runsync(client, scheduler=scheduler, num_inference_steps=4)
    assert first_image(client, body).shape == (128, 128, 3)


def _init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))


def test_img2img_departs_further_as_prompt_strength_grows(client: httpx.Client) -> None:
    # The tiny model's VAE has random weights, so even a faithful img2img cannot give the init
    # image back; the reference is its output at the lowest strength (init latents barely noised).
    init = png_data_uri(_init_image())
    outputs = []
    for strength in (0.1, 0.4, 0.7, 1.0):
        body = runsync(
            client, init_image=init, prompt_strength=strength, num_inference_steps=10, seed=5
        )
        outputs.append(first_image(client, body).astype(float))
    distances = [np.abs(out - outputs[0]).mean() for out in outputs[1:]]
    assert distances[0] < distances[1] < distances[2], distances


def test_inpainting_preserves_white_mask_pixels(client: httpx.Client) -> None:
    init = _init_image()
    mask = Image.new("L", (128, 128), 255)  # white: preserved
    mask.paste(0, (32, 32, 96, 96))  # black: repainted
    body = runsync(
        client, init_image=png_data_uri(init), mask=png_data_uri(mask), prompt_strength=1.0,
        num_inference_steps=4,
    )  # fmt: skip
    out = first_image(client, body)
    keep = np.asarray(mask) == 255
    original = np.asarray(init)
    assert np.array_equal(out[keep], original[keep])
    assert not np.array_equal(out[~keep], original[~keep])


def test_init_image_as_bare_base64_and_resized(client: httpx.Client) -> None:
    big = _init_image().resize((300, 200))
    bare = png_data_uri(big).partition(",")[2]
    body = runsync(client, init_image=bare, width=256, height=128, num_inference_steps=2)
    assert first_image(client, body).shape == (128, 256, 3)


def _flat_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_huge_init_images_are_scaled_down_or_refused_as_before(client: httpx.Client) -> None:
    # Decoded in the image processes: a 64-million-pixel PNG (250 KB) is accepted and scaled
    # down; a broken one and one past the limit get the same answers as small ones do.
    huge = _flat_png(7990, 7990)
    encoded = base64.b64encode(huge).decode()
    broken = base64.b64encode(huge[: len(huge) // 2]).decode()
    over = base64.b64encode(_flat_png(7990, 8020)).decode()
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(run, client, init_image=encoded, num_inference_steps=2) for _ in "ab"]
        refused = [
            pool.submit(client.post, "/v2/default/run", json={"input": {"prompt": "p", **given}})
            for given in ({"init_image": broken}, {"init_image": over})
        ]
        # Meanwhile other calls are answered.
        assert client.get("/v2/default/health").status_code == 200
        job_ids = [job.result() for job in jobs]
        answers = [answer.result() for answer in refused]
    for job_id in job_ids:
        body = wait_for(client, f"/v2/default/status/{job_id}", {"COMPLETED", "FAILED"})
        assert body["status"] == "COMPLETED", body
        assert first_image(client, body).shape == (128, 128, 3)
    assert [answer.status_code for answer in answers] == [400, 400]
    assert "input.init_image: is not a readable image" in answers[0].json()["error"]
    assert (
        "input.init_image: image is too large (7990 x 8020, at most 64000000 pixels)"
        in answers[1].json()["error"]
    )


def test_stream_reports_progress_then_output(client: httpx.Client) -> None:
    job_id = run(client, num_inference_steps=30)
    seen: list[str] = []
    deadline = time.time() + 120
    while time.time() < deadline:
        body = client.get(f"/v2/default/stream/{job_id}").json()
        seen += [chunk["output"]["progress"] for chunk in body["stream"]]
        if body["status"] == "COMPLETED":
            break
        time.sleep(0.05)
    assert body["status"] == "COMPLETED"
    assert seen and seen[-1] == "30/30"
    steps = [int(p.split("/")[0]) for p in seen]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # each event read once
    assert body["output"][0]["image"].startswith("http")
    assert client.get(f"/v2/default/stream/{job_id}").json()["stream"] == []


def test_progress_shows_in_status_while_running(client: httpx.Client) -> None:
    job_id = run(client, num_inference_steps=200)
    body = wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
    deadline = time.time() + 60
    while "output" not in body and time.time() < deadline:
        body = client.get(f"/v2/default/status/{job_id}").json()
    done, total = body["output"]["progress"].split("/")
    assert int(total) == 200 and 0 <= int(done) <= 200
    client.post(f"/v2/default/cancel/{job_id}")


def test_cancel_running_job_stops_within_a_step(client: httpx.Client) -> None:
    job_id = run(client, num_inference_steps=500)
    wait_for(client, f"/v2/default/status/{job_id}", {"IN_PROGRESS"})
    time.sleep(0.3)
    r = client.post(f"/v2/default/cancel/{job_id}")
    assert r.status_code == 200
    assert r.json() == {"id": job_id, "status": "CANCELLED"}
    # the worker is free again at once: a short job finishes long before 500 steps would
    started = time.time()
    assert runsync(client, num_inference_steps=2)["status"] == "COMPLETED"
    assert time.time() - started < 20
    body = client.get(f"/v2/default/status/{job_id}").json()
    assert body["status"] == "CANCELLED" and "output" not in body


def test_cancel_queued_job(client: httpx.Client) -> None:
    blocker = run(client, num_inference_steps=500)
    queued = run(client)
    r = client.post(f"/v2/default/cancel/{queued}")
    assert r.json()["status"] == "CANCELLED"
    client.post(f"/v2/default/cancel/{blocker}")
    time.sleep(0.5)
    assert client.get(f"/v2/default/status/{queued}").json()["status"] == "CANCELLED"


def test_cancel_finished_job_keeps_its_status(client: httpx.Client) -> None:
    body = runsync(client)
    r = client.post(f"/v2/default/cancel/{body['id']}")
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED"


def test_execution_timeout_then_retry(client: httpx.Client) -> None:
    r = client.post(
        "/v2/default/run",
        json={
            "input": {"prompt": "x", **FAST, "num_inference_steps": 500},
            "policy": {"executionTimeout": 1000},
        },
    )
    job_id = r.json()["id"]
    body = wait_for(client, f"/v2/default/status/{job_id}", FINAL)
    assert body["status"] == "TIMED_OUT"
    assert body["executionTime"] < 5000
    r = client.post(f"/v2/default/retry/{job_id}")
    assert r.status_code == 200 and r.json() == {"id": job_id, "status": "IN_QUEUE"}
    assert wait_for(client, f"/v2/default/status/{job_id}", FINAL)["status"] == "TIMED_OUT"
    health = client.get("/v2/default/health").json()
    assert health["jobs"]["retried"] >= 1


def test_retry_refuses_completed_job(client: httpx.Client) -> None:
    body = runsync(client)
    r = client.post(f"/v2/default/retry/{body['id']}")
    assert r.status_code == 409
    assert "only FAILED or TIMED_OUT" in r.json()["error"]


def test_purge_queue_removes_only_callers_queued_jobs(
    client: httpx.Client, server: ServerProcess
) -> None:
    blocker = run(client, num_inference_steps=500)
    wait_for(client, f"/v2/default/status/{blocker}", {"IN_PROGRESS"})
    mine = [run(client) for _ in range(3)]
    other = httpx.Client(base_url=server.url, headers={"Authorization": OTHER_KEY})
    theirs = run(other)
    r = client.post("/v2/default/purge-queue")
    assert r.status_code == 200 and r.json() == {"removed": 3, "status": "completed"}
    for job_id in mine:
        assert client.get(f"/v2/default/status/{job_id}").status_code == 404
    assert client.get(f"/v2/default/status/{blocker}").json()["status"] == "IN_PROGRESS"
    client.post(f"/v2/default/cancel/{blocker}")
    assert wait_for(other, f"/v2/default/status/{theirs}", FINAL)["status"] == "COMPLETED"


def test_health_shape(client: httpx.Client) -> None:
    runsync(client)
    body = client.get("/v2/default/health").json()
    assert set(body) == {"jobs", "workers", "model"}  # model: sdserve's addition
    assert body["model"]["name"] == "default" and body["model"]["family"] == "sd1"
    assert set(body["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert body["jobs"]["completed"] >= 1
    assert set(body["workers"]) == {"idle", "running"}
    assert body["workers"]["idle"] + body["workers"]["running"] == 1


class _ImageHost:
    """Serves PNG bytes on loopback, as a client's image host would."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("content-length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


def test_init_image_and_mask_from_urls(client: httpx.Client) -> None:
    init = _init_image()
    mask = Image.new("L", (128, 128), 255)
    mask.paste(0, (0, 0, 64, 128))
    host = _ImageHost(
        {
            "/init.png": base64.b64decode(png_data_uri(init).partition(",")[2]),
            "/mask.png": base64.b64decode(png_data_uri(mask).partition(",")[2]),
            "/huge.png": b"\0" * (11 * 1024 * 1024),
        }
    )
    body = runsync(
        client, init_image=f"{host.url}/init.png", mask=f"{host.url}/mask.png",
        num_inference_steps=3,
    )  # fmt: skip
    out = first_image(client, body)
    assert np.array_equal(out[:, 64:], np.asarray(init)[:, 64:])
    for path, rule in [("/missing.png", "HTTP 404"), ("/huge.png", "larger than 10485760 bytes")]:
        r = client.post(
            "/v2/default/run",
            json={"input": {"prompt": "p", **FAST, "init_image": f"{host.url}{path}"}},
        )
        assert r.status_code == 400
        assert "input.init_image" in r.json()["error"] and rule in r.json()["error"]
    host.http.shutdown()

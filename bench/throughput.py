"""Throughput of shared mode: jobs per second with one `sdserve worker`, then with two.

One API-only node (`sdserve serve --workers 0`) and N `sdserve worker` processes share a fresh
PostgreSQL database on this machine; the same batch of jobs for a tiny random Stable Diffusion
pipeline is submitted through `/v2/default/run`, and the clock runs from the first submit until
`/health` counts every job COMPLETED. Round one has one worker using every core, round two two
workers splitting the cores (`--threads`), so both rounds use the whole CPU.

Why it should scale: jobs are independent and each runs on one worker, so two workers on two
cores should about double the jobs per second, provided the delivery path (PostgreSQL,
procrastinate, the API node) costs little beside a generation, and torch on one thread per
process uses a core about as well as one process on two threads does. Goal: ratio >= 1.8 on a
2-core machine. Each round first runs 2 warm-up jobs per worker, outside the clock.

Run it on an otherwise idle machine: torch running on several threads slows down many-fold when
another process takes one of its cores, which hurts the one-worker round most.

    python bench/throughput.py --database postgresql://USER@HOST:5432/DB \
        [--jobs 48] [--steps 4] [--size 128]

The database named in the URL is only used to create and drop the rounds' own databases
(`sdserve_bench_<hex>`); the role needs CREATEDB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

# The tiny random models are test fixtures (tests/models): import them from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1
TAIL_LINES = 25
GOAL = 1.8
PROMPT = "a red circle on a blue background"


class BenchFailed(Exception):
    """A round could not be measured; the message says why (log tails included)."""


@dataclass
class Child:
    """A subprocess of this benchmark and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError as exc:
            return f"--- {self.name}: no log ({exc})"
        return "\n".join([f"--- {self.name} ({self.log}), last lines:", *lines])


@dataclass(frozen=True)
class Round:
    workers: int
    threads: int
    jobs: int
    seconds: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def database_url(admin_url: str, name: str) -> str:
    """`admin_url` with its database replaced by `name` (user, host, port, options kept)."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database for the duration; dropped afterwards, connections and all."""
    name = f"sdserve_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise BenchFailed(f"cannot connect to {admin_url}: {exc}") from None
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield database_url(admin_url, name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(nsfw_check: bool) -> dict[str, str]:
    """This environment without any SDSERVE_* setting that could change what is measured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        SDSERVE_NSFW_CHECK="true" if nsfw_check else "false",
    )
    return env


def spawn(name: str, args: Sequence[str], log: Path, env: dict[str, str]) -> Child:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "sdserve", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Child(name, process, log)


def stop_all(children: Sequence[Child]) -> None:
    """SIGTERM every child (an idle worker exits at once), then SIGKILL what is left."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def failure(message: str, children: Sequence[Child]) -> BenchFailed:
    return BenchFailed("\n".join([message, *(child.tail() for child in children)]))


def health(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v2/default/health")
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def check_alive(children: Sequence[Child]) -> None:
    for child in children:
        code = child.process.poll()
        if code is not None:
            raise failure(f"{child.name} exited with code {code}", children)


def wait_ready(client: httpx.Client, workers: int, children: Sequence[Child]) -> None:
    """Until `/health` shows every worker idle (each has loaded the model by then)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        check_alive(children)
        try:
            seen = health(client)["workers"]
            if seen["idle"] == workers and seen["running"] == 0:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise failure(
        f"not ready within {START_TIMEOUT_S:.0f} s: wanted {workers} idle worker(s),"
        f" /health last showed {seen or 'nothing'}",
        children,
    )


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v2/default/run", json=body)
    if response.status_code != 200:
        raise BenchFailed(f"/run answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def first_failure(client: httpx.Client, job_ids: Sequence[str]) -> str:
    for job_id in job_ids:
        answer = client.get(f"/v2/default/status/{job_id}").json()
        if answer.get("status") not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
            return f"job {job_id} ended {answer.get('status')}: {answer.get('error')}"
    return "a job failed"


def run_batch(
    client: httpx.Client,
    bodies: Sequence[dict[str, Any]],
    timeout_s: float,
    children: Sequence[Child],
) -> float:
    """Submit every body at once; the seconds from the first submit until all are COMPLETED."""
    before = health(client)["jobs"]
    target = before["completed"] + len(bodies)
    started = time.perf_counter()
    job_ids = [submit(client, body) for body in bodies]
    deadline = started + timeout_s
    while True:
        jobs = health(client)["jobs"]
        if jobs["completed"] >= target:
            return time.perf_counter() - started
        if jobs["failed"] > before["failed"]:
            raise failure(first_failure(client, job_ids), children)
        if time.perf_counter() > deadline:
            raise failure(f"jobs not done within {timeout_s:.0f} s: /health says {jobs}", children)
        check_alive(children)
        time.sleep(POLL_S)


def request(size: int, steps: int, seed: int) -> dict[str, Any]:
    return {
        "input": {
            "prompt": PROMPT,
            "width": size,
            "height": size,
            "num_inference_steps": steps,
            "seed": seed,
        }
    }


def measure(workers: int, args: argparse.Namespace, model: Path, work: Path) -> Round:
    """One round on a fresh database: one API node, `workers` workers, warm-up, then the batch."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    folder = work / f"{workers}-workers"
    data_dir = folder / "data"
    data_dir.mkdir(parents=True)
    env = child_env(args.nsfw_check)
    port = free_port()
    children: list[Child] = []
    with fresh_database(args.database) as database:
        shared = ["--database", database, "--data-dir", str(data_dir), "--model", str(model)]
        try:
            children.append(
                spawn(
                    "api node",
                    ["serve", "--workers", "0", "--port", str(port), *shared],
                    folder / "api.log",
                    env,
                )
            )
            for index in range(workers):
                children.append(
                    spawn(
                        f"worker {index}",
                        ["worker", *shared, "--device", "cpu", "--threads", str(threads)],
                        folder / f"worker-{index}.log",
                        env,
                    )
                )
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                wait_ready(client, workers, children)
                warm_up = [request(args.size, args.steps, 10_000 + i) for i in range(2 * workers)]
                run_batch(client, warm_up, args.timeout, children)
                batch = [request(args.size, args.steps, seed) for seed in range(args.jobs)]
                seconds = run_batch(client, batch, args.timeout, children)
        finally:
            stop_all(children)
    return Round(workers=workers, threads=threads, jobs=args.jobs, seconds=seconds)


def report(rounds: Sequence[Round], args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    check = "with" if args.nsfw_check else "without"
    print(
        f"tiny random SD pipeline, {args.size}x{args.size}, {args.steps} steps, K-LMS,"
        f" {args.jobs} jobs per round, {cores} CPU core(s), {check} the NSFW check"
    )
    row = "{:>7}  {:>12}  {:>5}  {:>8}  {:>7}"
    print(row.format("workers", "threads each", "jobs", "seconds", "jobs/s"))
    for r in rounds:
        print(row.format(r.workers, r.threads, r.jobs, f"{r.seconds:.2f}", f"{r.jobs_per_s:.2f}"))
    ratio = rounds[-1].jobs_per_s / rounds[0].jobs_per_s
    print(f"ratio 2 workers / 1 worker: {ratio:.2f}  (goal >= {GOAL} with 2 cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--database", required=True, help="postgresql://... URL of a server to create databases on"
    )
    parser.add_argument("--jobs", type=int, default=48, help="timed jobs per round")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per job")
    parser.add_argument("--size", type=int, default=128, help="width and height (multiple of 8)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds a batch may take before giving up"
    )
    parser.add_argument(
        "--nsfw-check", action="store_true", help="let the workers run their NSFW check too"
    )
    args = parser.parse_args()
    if not args.database.startswith(("postgresql://", "postgres://")):
        parser.error("--database must be a postgresql:// URL")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    from tests.models.random_model import build_random_pipeline

    work = Path(tempfile.mkdtemp(prefix="sdserve-throughput-"))
    model = work / "tiny-model"
    build_random_pipeline(model, seed=0)
    rounds: list[Round] = []
    try:
        for workers in (1, 2):
            print(f"measuring with {workers} worker(s)...", file=sys.stderr, flush=True)
            rounds.append(measure(workers, args, model, work))
    except BenchFailed as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(f"benchmark failed; logs kept in {work}") from None
    shutil.rmtree(work, ignore_errors=True)
    report(rounds, args)


if __name__ == "__main__":
    main()

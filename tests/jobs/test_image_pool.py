"""Input images are decoded in processes of their own: they go when their API process goes."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
from PIL import Image

from tests.conftest import API_KEY
from tests.helpers import png_data_uri, running_server


def test_decoders_exit_when_the_api_process_is_killed(tmp_path: Path, tiny_model: Path) -> None:
    args = ["--model", str(tiny_model), "--workers", "0"]
    env = {"SDSERVE_API_KEYS": API_KEY}
    with running_server(tmp_path / "data", args, env, workers=False) as srv:
        assert srv.process is not None
        server = psutil.Process(srv.process.pid)
        before = set(server.children())
        image = png_data_uri(Image.new("RGB", (300, 200), (10, 20, 30)))
        r = httpx.post(
            f"{srv.url}/v2/default/run",
            json={"input": {"prompt": "p", "init_image": image}},
            headers=srv.auth,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        decoders = set(server.children()) - before
        assert decoders, "no process decoded the image"
        srv.kill()
        _, alive = psutil.wait_procs(list(decoders), timeout=30)
        assert not alive, f"decoders left running after their API process was killed: {alive}"

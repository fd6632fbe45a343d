"""`python -m sdserve.demo.train`: reproducible, and an interrupted run resumes where it was."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from sdserve.engine.pipelines import load_pipelines
from sdserve.registry import ModelSpec

WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
           "vae/diffusion_pytorch_model.safetensors")  # fmt: skip


def _train(folder: Path) -> subprocess.Popen[str]:
    """A very short training run (the real one: the command's defaults)."""
    command = [
        sys.executable, "-m", "sdserve.demo.train", "--out", str(folder / "model"),
        "--work", str(folder / "work"), "--vae-steps", "6", "--steps", "40", "--batch", "2",
        "--checkpoint-every", "4", "--device", "cpu",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_an_interrupted_run_resumes_to_the_same_model(tmp_path: Path) -> None:
    straight = _train(tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stdout.read() if straight.stdout else ""

    interrupted = _train(tmp_path / "interrupted")
    checkpoint = tmp_path / "interrupted" / "work" / "denoiser.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and interrupted.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    interrupted.send_signal(signal.SIGKILL)
    assert interrupted.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not finished
    assert not (tmp_path / "interrupted" / "model").exists()

    resumed = _train(tmp_path / "interrupted")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert "resuming denoiser.pt from step" in log

    for weights in WEIGHTS:  # the same, to float rounding (the EMA's resumed arithmetic)
        made = load_file(tmp_path / "interrupted" / "model" / weights)
        expected = load_file(tmp_path / "straight" / "model" / weights)
        assert made.keys() == expected.keys()
        for name, tensor in made.items():
            assert torch.allclose(tensor, expected[name], rtol=0, atol=1e-5), (weights, name)
    # and what it saves is a model sdserve loads like any other
    spec = ModelSpec(name="fresh", source=str(tmp_path / "straight" / "model"), native_size=64)
    assert load_pipelines(spec, "cpu").txt2img.vae_scale_factor == 4

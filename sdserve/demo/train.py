"""Recreate the built-in demo model from nothing: `python -m sdserve.demo.train`.

Two phases on procedurally drawn scenes (see `scenes`): first the VAE learns to compress
64x64 images into 16x16 latents, then the UNet and the text encoder learn, together, to denoise
those latents given a caption. Everything random comes from `--seed` and the step number, so a
run is reproducible and resumes exactly from its last checkpoint in `--work` when interrupted.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import torch
import typer
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.training_utils import EMAModel

from sdserve.demo import architecture
from sdserve.demo.scenes import render, sample_scene, training_example
from sdserve.registry import DEMO_MODEL_DIR

log = logging.getLogger("sdserve.demo.train")

OFFSET_NOISE = 0.1


@dataclass(frozen=True)
class Plan:
    seed: int
    vae_steps: int
    steps: int
    batch: int
    device: str
    checkpoint_every: int = 250


def _batch(plan: Plan, phase: int, step: int) -> tuple[torch.Tensor, list[str]]:
    """The batch of a step, a function of the step alone: images in [-1, 1] and, for the
    denoiser (phase 2), their captions."""
    rng = random.Random(plan.seed * 1_000_003 + phase * 100_000 + step)
    if phase == 2:
        scenes, captions = zip(*(training_example(rng) for _ in range(plan.batch)), strict=True)
    else:
        scenes, captions = tuple(sample_scene(rng) for _ in range(plan.batch)), ()
    pixels = np.stack([np.asarray(render(scene), dtype=np.float32) for scene in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1
    return images.to(plan.device), list(captions)


M = TypeVar("M", bound=torch.nn.Module)


def _on(model: M, device: str) -> M:
    # torch's own signature: diffusers' and transformers' wrappers of `to` confuse mypy.
    return torch.nn.Module.to(model, device)


def _save(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically: an interruption never leaves a torn one."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def _learning_rate(step: int, steps: int, peak: float) -> float:
    """Warm up, hold, then decay linearly to zero over the last 30 %."""
    warmup, decay_from = 100, int(steps * 0.7)
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_from:
        return peak
    return peak * max(0.0, (steps - step) / (steps - decay_from))


def train_vae(plan: Plan, work: Path) -> tuple[Any, float]:
    """Phase 1. Returns the VAE and its latent scaling factor (1 / the latents' std, as SD)."""
    final = work / "vae-final.pt"
    torch.manual_seed(plan.seed)
    vae = _on(architecture.vae(), plan.device)
    if final.is_file():
        saved = torch.load(final, map_location=plan.device)
        vae.load_state_dict(saved["model"])
        return vae, float(saved["scaling_factor"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = _resume(work / "vae.pt", vae, optimizer, plan.device)
    began, logged = time.monotonic(), start
    for step in range(start, plan.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, plan.vae_steps, 1e-3)
        images, _ = _batch(plan, 1, step)
        noise = torch.Generator(plan.device).manual_seed(plan.seed + step)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator=noise)).sample
        loss = (
            torch.nn.functional.mse_loss(recon, images)
            + torch.nn.functional.l1_loss(recon, images)
            + 1e-6 * posterior.kl().mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            _progress("vae", step + 1, plan.vae_steps, loss.item(), began, logged)
        if (step + 1) % plan.checkpoint_every == 0:
            _checkpoint(work / "vae.pt", vae, optimizer, step + 1)
    vae.eval()
    with torch.no_grad():
        images, _ = _batch(plan, 3, 0)
        scaling_factor = 1 / vae.encode(images).latent_dist.mean.std().item()
    _save({"model": vae.state_dict(), "scaling_factor": scaling_factor}, final)
    return vae, scaling_factor


def train_denoiser(plan: Plan, work: Path, vae: Any, scaling_factor: float) -> Any:
    """Phase 2: the UNet and the text encoder, with an exponential moving average of both."""
    torch.manual_seed(plan.seed + 1)
    tokenizer = architecture.write_tokenizer(work / "tokenizer")
    encoder = _on(architecture.text_encoder(tokenizer), plan.device)
    unet = _on(architecture.unet(), plan.device)
    params = [*unet.parameters(), *encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=8e-4, weight_decay=0.01)
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=0.75)
    # The shipped scheduler's own noise schedule: training and sampling cannot drift apart.
    noise_schedule = DDPMScheduler.from_config(architecture.scheduler().config)
    train_steps = int(noise_schedule.config["num_train_timesteps"])
    models = torch.nn.ModuleDict({"unet": unet, "encoder": encoder})
    start = _resume(work / "denoiser.pt", models, optimizer, plan.device, ema)
    vae.requires_grad_(False)
    began, logged = time.monotonic(), start
    for step in range(start, plan.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, plan.steps, 8e-4)
        images, captions = _batch(plan, 2, step)
        rng = torch.Generator(plan.device).manual_seed(plan.seed + step)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean * scaling_factor
        # Offset noise: a random shift of each channel as a whole. Without it the model reads
        # the starting noise's slight overall tint as the picture's, and backgrounds (this
        # world's largest areas) come out in the noise's colour instead of the prompt's.
        noise = torch.randn(latents.shape, generator=rng, device=plan.device)
        shift = torch.randn((*latents.shape[:2], 1, 1), generator=rng, device=plan.device)
        noise = noise + OFFSET_NOISE * shift
        timesteps = torch.randint(0, train_steps, (plan.batch,), generator=rng, device=plan.device)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(plan.device)  # fmt: skip
        predicted = unet(noisy, timesteps, encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(predicted, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        if (step + 1) % 50 == 0:
            _progress("denoiser", step + 1, plan.steps, loss.item(), began, logged)
        if (step + 1) % plan.checkpoint_every == 0 or step + 1 == plan.steps:
            _checkpoint(work / "denoiser.pt", models, optimizer, step + 1, ema)
    ema.copy_to(params)
    return architecture.assemble(vae, encoder, tokenizer, unet)


def _checkpoint(
    path: Path, model: Any, optimizer: Any, step: int, ema: EMAModel | None = None
) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    if ema is not None:
        state["ema"] = ema.state_dict()
    _save(state, path)
    log.info("checkpoint at step %d: %s", step, path)


def _resume(
    path: Path, model: Any, optimizer: Any, device: str, ema: EMAModel | None = None
) -> int:
    """Load the last checkpoint, if any; the step to go on from."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    log.info("resuming %s from step %d", path.name, state["step"])
    return int(state["step"])


def _progress(phase: str, step: int, steps: int, loss: float, began: float, first: int) -> None:
    rate = (step - first) / max(1e-9, time.monotonic() - began)
    eta_min = (steps - step) / max(rate, 1e-9) / 60
    log.info("%s step %d/%d loss %.4f (%.2f steps/s, %.0f min left)", phase, step, steps,
             loss, rate, eta_min)  # fmt: skip


def export(pipeline: Any, scaling_factor: float, out: Path) -> None:
    """Save in diffusers format, replacing `out` only once the new model is complete."""
    pipeline.vae.register_to_config(scaling_factor=scaling_factor)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipeline.save_pretrained(staging / "model", safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        (staging / "model").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(
    out: Annotated[Path, typer.Option(help="Where to save the model (diffusers format).")] = (
        DEMO_MODEL_DIR
    ),
    work: Annotated[
        Path, typer.Option(help="Checkpoints; a run resumes from the last one here.")
    ] = Path("demo-training"),
    steps: Annotated[int, typer.Option(help="Denoiser (UNet + text encoder) steps.")] = 7000,
    vae_steps: Annotated[int, typer.Option(help="VAE steps.")] = 800,
    batch: Annotated[int, typer.Option(help="Images per step.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 250,
    device: Annotated[str, typer.Option(help="auto (cuda if present), cpu or cuda[:N].")] = "auto",
) -> None:
    """Train the demo model from scratch and save it to --out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = Plan(seed, vae_steps, steps, batch, device, checkpoint_every)
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    vae, scaling_factor = train_vae(plan, work)
    pipeline = train_denoiser(plan, work, vae, scaling_factor)
    export(pipeline.to("cpu"), scaling_factor, out)
    log.info("saved the demo model to %s after %.0f min", out, (time.monotonic() - began) / 60)


if __name__ == "__main__":
    typer.run(main)

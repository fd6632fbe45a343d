"""LitServe around the same diffusers call sdserve makes, for bench/litserve_compare.py; run
with the python of an environment that has litserve (see there).

    python bench/litserve_app.py MODEL --port 8767 [--workers 1] [--max-batch 4] \
        [--scheduler LMSDiscreteScheduler]
"""

import argparse
import base64
import io
from typing import Any

import diffusers
import litserve as ls
import torch
from diffusers import StableDiffusionPipeline

SIZE, STEPS = 128, 10


class Diffusion(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model: str, one_thread: bool, scheduler: str) -> None:
        super().__init__()
        self.model = model
        self.one_thread = one_thread
        self.scheduler = getattr(diffusers, scheduler)

    def setup(self, device: str) -> None:
        if self.one_thread:  # workers share the cores, as sdserve's do
            torch.set_num_threads(1)
        self.pipe = StableDiffusionPipeline.from_pretrained(self.model, safety_checker=None)
        self.pipe.set_progress_bar_config(disable=True)

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # unannotated: LitServe validates a request against the annotation
        request = dict(request)
        return request["prompt"], int(request["seed"])

    def batch(self, inputs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return inputs

    def predict(self, inputs: Any) -> Any:
        many = isinstance(inputs, list)
        items = inputs if many else [inputs]
        self.pipe.scheduler = self.scheduler.from_config(self.pipe.scheduler.config)
        images = self.pipe(
            [prompt for prompt, _ in items], height=SIZE, width=SIZE,
            num_inference_steps=STEPS, guidance_scale=7.5,
            generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in items],
        ).images  # fmt: skip
        return images if many else images[0]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, image: Any) -> dict[str, str]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"image": base64.b64encode(buffer.getvalue()).decode()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--scheduler", default="LMSDiscreteScheduler", help="diffusers' class")
    args = parser.parse_args()
    batching = {"max_batch_size": args.max_batch, "batch_timeout": 0.01}
    server = ls.LitServer(
        Diffusion(args.model, one_thread=args.workers > 1, scheduler=args.scheduler),
        accelerator="cpu",
        workers_per_device=args.workers,
        **(batching if args.max_batch > 1 else {}),
    )
    server.run(port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()

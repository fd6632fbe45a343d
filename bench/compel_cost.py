"""Cost of compel's prompt weighting on adversarial prompts, against a plain prompt as long.

Two costs: compel's parse (pyparsing; the engine turns its packrat memo on) and the text
encoder's passes (each part weighted below 1 re-encodes the whole prompt without it; each
`.and()` part is encoded on its own). Runs the engine's own `weighted_embeddings` on the tiny
test model's tokenizer and text encoder (one token per character), counting encoder passes,
and prints one table of seconds and ratios measured in this run.

    python bench/compel_cost.py [--length 4000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import pyparsing
import torch
from compel.prompt_parser import PromptParser

# The tiny random models are test fixtures (tests/models): import them from this checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdserve.demo.architecture import text_encoder
from sdserve.engine.prompts import memoize_parsing, weighted_embeddings
from sdserve.jobs.errors import InvalidInput
from sdserve.jobs.requests import MAX_COMPEL_PARTS, check_compel_prompt
from tests.models.random_model import _write_tokenizer_files


def _fill(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def _accepted(prompt: str) -> str:
    try:
        check_compel_prompt("prompt", prompt)
    except InvalidInput:
        return "refused"
    return "accepted"


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def parse_table(length: int) -> None:
    parser = PromptParser()
    plain = _fill("a photo of a cat, ", length)
    nested = {d: "(" * d + "a" + ")" * d for d in (3, 4, 5, 6)}
    cases = {
        f"plain, {length} chars": plain,
        **{f"{d} nested (): {p}": p for d, p in nested.items()},
    }
    cases[f"((((a)))) repeated, {length} chars"] = _fill("((((a)))) ", length)
    print("\n| prompt | API | parse s, memo off | parse s, memo on |")
    print("|---|---|---|---|")
    base_off = base_on = 0.0
    for name, prompt in cases.items():
        pyparsing.ParserElement.disable_memoization()
        # Unmemoized, the long nested case takes hours: it is timed on its first 60 characters.
        off_prompt = prompt if len(prompt) < 100 or "((" not in prompt else prompt[:60]
        off = _timed(lambda p=off_prompt: parser.parse_conjunction(p))  # type: ignore[misc]
        memoize_parsing()
        on = _timed(lambda p=prompt: parser.parse_conjunction(p))  # type: ignore[misc]
        if not base_off:
            base_off, base_on = off, on
        note = " (first 60 chars)" if off_prompt != prompt else ""
        print(
            f"| {name} | {_accepted(prompt)} | {off:.3f}{note} ({off / base_off:.2f}x plain)"
            f" | {on:.3f} ({on / base_on:.2f}x plain) |",
            flush=True,
        )


def encoder_table(length: int) -> None:
    torch.manual_seed(0)
    tokenizer = _write_tokenizer_files(Path(tempfile.mkdtemp()))
    encoder = text_encoder(tokenizer, layers=2, mlp_ratio=2).eval()
    passes = [0]
    encoder.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=encoder)
    short = length // 10
    # Alternating weights: compel merges neighbours of one weight into one fragment.
    downweighted = "cat- dog " * MAX_COMPEL_PARTS
    cases = {
        f"plain, {length} chars": _fill("a photo of a cat, ", length),
        f"{MAX_COMPEL_PARTS} downweighted words (the most accepted) in {length} chars": downweighted
        + _fill("a photo of a cat, ", length - len(downweighted)),
        f"plain, {short} chars": _fill("a photo of a cat, ", short),
        f"'cat- dog ' repeated, {short} chars": _fill("cat- dog ", short),
        f"{short // 4}-part .and(), {short} chars": "("
        + ",".join(['"a"'] * (short // 4))
        + ").and()",
    }
    print("\n| prompt | API | encoder passes | embeddings s | vs plain of its length |")
    print("|---|---|---|---|---|")
    plain_s: dict[int, float] = {}
    with torch.no_grad():
        weighted_embeddings(pipe, "sd1", "warm up", "")
        for name, prompt in cases.items():
            passes[0] = 0
            seconds = _timed(lambda p=prompt: weighted_embeddings(pipe, "sd1", p, ""))  # type: ignore[misc]
            size = length if len(prompt) > short * 2 else short
            plain_s.setdefault(size, seconds)
            print(
                f"| {name} | {_accepted(prompt)} | {passes[0]} | {seconds:.2f}"
                f" | {seconds / plain_s[size]:.1f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4000, help="characters (the API's limit)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    parse_table(args.length)
    encoder_table(args.length)


if __name__ == "__main__":
    main()

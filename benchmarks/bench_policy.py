"""Cost of request validation and the content policy (resolve_request runs on the event loop at every
/generate): p50/p99 over prompts of the longest allowed size, ASCII or full of full-width and invisible
characters, with 0 or 1,000 configured banned words.

    python benchmarks/bench_policy.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import ms, percentile  # noqa: E402  (benchmarks/measure.py)

from bot.config import load_config  # noqa: E402
from bot.prompts.builder import PromptChoices  # noqa: E402
from bot.prompts.requests import MAX_PROMPT_LENGTH, GenerationRequest, resolve_request  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    models = load_config(None).models
    rng = random.Random(1)
    vocabulary = [f"tag_{i}_word" for i in range(2000)]
    ascii_prompt = ", ".join(rng.choice(vocabulary) for _ in range(400))[:MAX_PROMPT_LENGTH]
    hostile = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in ascii_prompt).replace(", ", ",\u200b")
    hostile = hostile[:MAX_PROMPT_LENGTH]
    banned = [f"bannedword{i}" for i in range(999)] + ["two words"]
    print(f"{'prompt':<32} {'banned':>6} {'p50':>9} {'p99':>9}")
    for name, prompt in (("ASCII, 2,000 chars", ascii_prompt), ("full-width + ZWSP, 2,000 chars", hostile)):
        choices = PromptChoices(prompt, negative=prompt, artist="artist_1, artist_2")
        request = GenerationRequest("tiny-sdxl", choices, nsfw_allowed=False)
        for words in ([], banned):
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                resolve_request(request, models, banned_words=words)
                times.append(time.perf_counter() - start)
            print(f"{name:<32} {len(words):>6} {ms(percentile(times, 50)):>9} {ms(percentile(times, 99)):>9}")


if __name__ == "__main__":
    main()

"""Benchmark classifier throughput on real behaviour text: fp32 against dynamic int8, side by side.

Usage:
    .venv/bin/python bench/scoring.py [--model PATH] [--texts N] [--rounds R] [--batch-size B]

The texts are rendered windows of the test split of the public data, so their
lengths are the ones the worker scores. Each round times every variant once, in
turn, so a noisy neighbour slows all of them alike. The result is the median of
the rounds and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from stream_detector.config import WorkerSettings
from stream_detector.datasets import default_data_dir
from stream_detector.render import render_window
from stream_detector.replay import build_replay_stream, retime
from stream_detector.scoring import Classifier, default_base_model
from stream_detector.window import iter_windows
from trainer.cli import BOOTSTRAP_START


def behaviour_texts(count: int) -> list[str]:
    """Render the first ``count`` windows of the test split as the worker would."""
    stream = retime(build_replay_stream(default_data_dir(), "test", seed=0), BOOTSTRAP_START)
    texts = []
    for window in iter_windows(stream.events, WorkerSettings().window_policy()):
        rendered = render_window(window.events, device_accounts=window.device_accounts, ip_accounts=window.ip_accounts)
        texts.append(rendered.text)
        if len(texts) == count:
            break
    return texts


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table of texts per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint or registry (default: the MiniLM base)")
    parser.add_argument("--texts", type=int, default=512, help="texts scored per round (default: 512)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default: 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    parser.add_argument("--max-length", type=int, default=96, help="tokens per text (default: 96)")
    args = parser.parse_args(argv)

    texts = behaviour_texts(args.texts)
    source = args.model or default_base_model()
    variants = {
        "fp32": Classifier.load(source, device="cpu", batch_size=args.batch_size, max_length=args.max_length),
        "int8 dynamic": Classifier.load(
            source, device="cpu", batch_size=args.batch_size, max_length=args.max_length, quantize=True
        ),
    }
    tokens = [
        len(ids) for ids in variants["fp32"].tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]
    ]

    for classifier in variants.values():
        classifier.score(texts[: args.batch_size])  # warm-up

    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(args.rounds):
        for name, classifier in variants.items():
            started = time.perf_counter()
            classifier.score(texts)
            rates[name].append(len(texts) / (time.perf_counter() - started))
        print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)

    baseline = statistics.median(rates["fp32"])
    print(f"model: {source}")
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(
        f"texts: {len(texts)}, median tokens {statistics.median(tokens):g}, max {max(tokens)}, "
        f"batch size {args.batch_size}, rounds {args.rounds}"
    )
    print()
    print("| variant | median texts/s | min | max | ratio to fp32 |")
    print("|---|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {max(values):.1f} | {median / baseline:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

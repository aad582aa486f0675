"""The ``stream-detector`` command: one entry point for the demo, the worker, replay, training and alerts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS: dict[str, str] = {
    "demo": "run the whole pipeline on the public data and print a summary",
    "worker": "run a stream worker (windower and scorer agents) until stopped",
    "replay": "re-time the public data to now and publish it to the event topics",
    "train": "fine-tune a classifier and register it as a new model version",
    "alerts": "print the alerts on the anomalies topic",
    "broker": "start, stop or check a local Kafka broker (start|stop|status)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand and return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(_usage())
        return 0 if arguments else 2
    command, rest = arguments[0], arguments[1:]
    handler = _handlers().get(command)
    if handler is None:
        print(f"stream-detector: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return handler(rest)


def _usage() -> str:
    lines = ["usage: stream-detector COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run 'stream-detector COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def _handlers() -> dict[str, Callable[[list[str]], int]]:
    return {
        "demo": _demo,
        "worker": _worker,
        "replay": _replay,
        "train": _train,
        "alerts": _alerts,
        "broker": _broker,
    }


def _demo(argv: list[str]) -> int:
    from stream_detector.demo import main as demo_main

    return demo_main(argv)


def _replay(argv: list[str]) -> int:
    from stream_detector.replay import main as replay_main

    return replay_main(argv)


def _train(argv: list[str]) -> int:
    from trainer.cli import main as train_main

    return train_main(["train", *argv] if not argv or argv[0].startswith("-") else argv, prog="stream-detector")


def _broker(argv: list[str]) -> int:
    from deploy.kafka_local import main as broker_main

    return broker_main(argv, prog="stream-detector broker")


def _worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stream-detector worker",
        description=(
            "Run the windower and scorer agents until SIGTERM or Ctrl-C. Every setting can also be set "
            "with a STREAM_DETECTOR_* environment variable, e.g. STREAM_DETECTOR_SCORE_EVERY_N=10."
        ),
    )
    parser.add_argument(
        "--bootstrap", help="Kafka host:port list (env STREAM_DETECTOR_BOOTSTRAP_SERVERS, default: 127.0.0.1:9092)"
    )
    parser.add_argument("--app-id", help="consumer group and table prefix (env STREAM_DETECTOR_APP_ID)")
    parser.add_argument(
        "--registry", type=Path, help="model registry folder (env STREAM_DETECTOR_MODEL_REGISTRY, default: ./models)"
    )
    parser.add_argument("--model-path", type=Path, help="checkpoint folder to use instead of the registry's current")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the classifier runs")
    parser.add_argument("--web-port", type=int, help="port of the Faust web server on 127.0.0.1 (default: off)")
    args = parser.parse_args(argv)

    from pydantic import ValidationError

    from stream_detector.config import WorkerSettings
    from stream_detector.scoring import ModelLoadError
    from stream_detector.topics import TopicError
    from stream_detector.worker import BrokerUnreachableError, run_worker
    from trainer.registry import RegistryError

    overrides = {
        "bootstrap_servers": args.bootstrap,
        "app_id": args.app_id,
        "model_registry": args.registry,
        "model_path": args.model_path,
        "device": args.device,
        "web_port": args.web_port,
    }
    try:
        settings = WorkerSettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        print(f"stream-detector worker: invalid settings:\n{error}", file=sys.stderr)
        return 2
    try:
        return run_worker(settings)
    except (ModelLoadError, RegistryError, BrokerUnreachableError, TopicError) as error:
        print(f"stream-detector worker: {error}", file=sys.stderr)
        return 1


def _alerts(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stream-detector alerts",
        description=(
            "Print alerts from the anomalies topic as JSON lines, in arrival order: only new ones, "
            "or all the broker keeps with --from-beginning."
        ),
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("STREAM_DETECTOR_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka host:port list (default: 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get("STREAM_DETECTOR_ANOMALIES_TOPIC", "anomalies"),
        help="alert topic (default: anomalies)",
    )
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest alert kept by the broker")
    parser.add_argument("--max", type=int, default=None, help="stop after this many alerts")
    parser.add_argument(
        "--idle-exit-s", type=float, default=None, help="stop after this many seconds without a new alert"
    )
    args = parser.parse_args(argv)

    from stream_detector.tail import tail_alerts

    return tail_alerts(
        args.bootstrap,
        args.topic,
        from_beginning=args.from_beginning,
        max_alerts=args.max,
        idle_exit_s=args.idle_exit_s,
    )

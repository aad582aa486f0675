"""Follow the alert topic from a shell."""

from __future__ import annotations

import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException


def tail_alerts(
    bootstrap_servers: str,
    topic: str,
    *,
    from_beginning: bool = False,
    max_alerts: int | None = None,
    idle_exit_s: float | None = None,
) -> int:
    """Print each alert value as one JSON line on stdout until stopped; return the exit code.

    Uses a throwaway consumer group that commits nothing, so it never moves the offsets
    of a real subscriber.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"stream-detector-alerts-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    print(f"following {topic} on {bootstrap_servers}; Ctrl-C stops", file=sys.stderr)
    printed = 0
    last_alert_s = time.monotonic()
    try:
        while max_alerts is None or printed < max_alerts:
            message = consumer.poll(1.0)
            if message is None:
                if idle_exit_s is not None and time.monotonic() - last_alert_s >= idle_exit_s:
                    break
                continue
            if message.error():
                print(f"consumer error: {message.error()}", file=sys.stderr)
                continue
            sys.stdout.write((message.value() or b"").decode("utf-8", errors="replace") + "\n")
            sys.stdout.flush()
            printed += 1
            last_alert_s = time.monotonic()
    except KeyboardInterrupt:
        pass
    except KafkaException as error:
        print(f"failed to read {topic} from {bootstrap_servers}: {error}", file=sys.stderr)
        return 1
    finally:
        consumer.close()
    return 0

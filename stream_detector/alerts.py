"""Alert identity: one alert per (user, window, model version), however often a window is scored."""

from __future__ import annotations

import hashlib


def alert_id(user_id: str, window_id: str, model_version: str) -> str:
    """Derive the alert id of a scored window.

    A replayed or re-scored window has the same user, window id and model version,
    so it maps to the same alert id and consumers can drop the repeat.
    """
    for name, value in (("user_id", user_id), ("window_id", window_id), ("model_version", model_version)):
        if not value:
            raise ValueError(f"{name} must not be empty")
    digest = hashlib.sha256("\x1f".join((user_id, window_id, model_version)).encode("utf-8"))
    return "a-" + digest.hexdigest()[:32]

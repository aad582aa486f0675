"""Write the JSON Schema files of the wire contracts from the Python models.

Run ``python -m schemas.export`` after changing a model; the test suite fails
while a file differs from what this module generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.models import Alert, ClickEvent, DeadLetter, Feedback, ModelUpdate, OrderEvent, ScoreRequest, SearchEvent

SCHEMA_DIR = Path(__file__).resolve().parent

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "click_event.schema.json": ClickEvent,
    "search_event.schema.json": SearchEvent,
    "order_event.schema.json": OrderEvent,
    "score_request.schema.json": ScoreRequest,
    "alert.schema.json": Alert,
    "feedback.schema.json": Feedback,
    "dead_letter.schema.json": DeadLetter,
    "model_update.schema.json": ModelUpdate,
}


def render_schema(model: type[BaseModel]) -> str:
    """Return the JSON Schema document of one model as stable, indented text."""
    document = {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write every schema file and print the paths written."""
    for name, model in SCHEMA_FILES.items():
        path = SCHEMA_DIR / name
        path.write_text(render_schema(model), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

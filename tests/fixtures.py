"""Load the published webhook payloads in tests/fixtures (see tests/fixtures/SOURCES.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent / "fixtures"


def payload(forge: str, name: str) -> dict[str, Any]:
    """A fresh copy of a published payload; tests build their variants on the copy."""
    data = json.loads((ROOT / forge / "webhooks" / f"{name}.json").read_text())
    return copy.deepcopy(data)

"""healthd's ``STATUS_DIR/daemon.json``, as the bench reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_daemon_json(status_dir: Path) -> dict[str, Any] | None:
    """``STATUS_DIR/daemon.json``, or None when it is absent or unreadable (half-written)."""
    try:
        data = json.loads((status_dir / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

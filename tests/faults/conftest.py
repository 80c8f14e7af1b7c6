"""The fault suite runs the integration tests' real daemon, services and cleanup.

Imported here (not copied), so a fault test gets the same per-test process marker, the same
teardown that kills whatever the test started, and the same ``daemon`` and ``services``.
"""

from __future__ import annotations

from integration.conftest import (
    _no_unreaped_children,
    daemon,
    env,
    mark,
    require_binary,
    services,
)

__all__ = ["_no_unreaped_children", "daemon", "env", "mark", "require_binary", "services"]

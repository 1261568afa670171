"""Which frameworks' generated projects run their heavy tests (own suites, engine resume, multi-
device steps) in this run. `nox -s scaffold` runs every framework; `nox -s ci` sets
DLZOO_PROJECT_FRAMEWORKS=2 to keep CI under 30 minutes: two frameworks a day, in turn
(DLZOO_SCAFFOLD_ROTATION, default the day), so each runs at least every three days, and the day's
single-framework session runs its own framework's projects as well."""

from __future__ import annotations

import datetime
import os

import pytest

ROTATION = int(os.environ.get("DLZOO_SCAFFOLD_ROTATION", datetime.date.today().toordinal()))


def selected(frameworks) -> list[str]:
    """The frameworks whose projects run today: all, or DLZOO_PROJECT_FRAMEWORKS of them in turn."""
    frameworks = list(frameworks)
    count = int(os.environ.get("DLZOO_PROJECT_FRAMEWORKS", len(frameworks)) or len(frameworks))
    if count >= len(frameworks):
        return frameworks
    return [frameworks[(ROTATION * count + i) % len(frameworks)] for i in range(count)]


def restricted() -> bool:
    """Whether this run keeps to a rotating subset (``nox -s ci``) rather than running everything."""
    return os.environ.get("DLZOO_PROJECT_FRAMEWORKS", "") not in ("", "0")


def only_today(framework: str, frameworks) -> None:
    """Skip, saying why, when ``framework`` is not in today's subset."""
    if framework not in selected(frameworks):
        pytest.skip(f"rotating subset (DLZOO_PROJECT_FRAMEWORKS): {framework}'s projects run on other days and in nox -s scaffold")

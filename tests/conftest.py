"""Session-wide checks. Under CI=true the run stops before the first test when Redis or PostgreSQL does not
answer, naming which (tests/services.py): the tests that need them would otherwise be skipped, not failed."""

from __future__ import annotations

import pytest

from tests.services import in_ci, missing_in_ci


def pytest_sessionstart(session: pytest.Session) -> None:
    if not in_ci():
        return
    missing = missing_in_ci()
    if missing:
        pytest.exit("CI=true and a service the suite needs is missing:\n  " + "\n  ".join(missing),
                    returncode=pytest.ExitCode.USAGE_ERROR)

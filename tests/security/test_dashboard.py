"""The dashboard and the docs pages with API keys configured: the pages and their static files are open (they
hold no data), the schema and every /v1 route stay behind the key, and nothing outside server/ui/ is served."""

from __future__ import annotations

from typing import Any

from server.routes.ui import UI_DIR
from tests.security.conftest import GOOD_KEY


def test_pages_and_assets_are_open_without_a_key(secured: Any) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/style.css", "/ui/vendor/uPlot.iife.min.js", "/docs", "/redoc",
                 "/ui/vendor/swagger-ui-bundle.js", "/ui/vendor/redoc.standalone.js"):
        response = secured.get(path)
        assert response.status_code == 200, path
    home = secured.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/ui/"


def test_schema_and_data_stay_behind_the_key(secured: Any) -> None:
    assert secured.get("/openapi.json").status_code == 401
    assert secured.get("/v1/jobs").status_code == 401
    schema = secured.get("/openapi.json", headers={"X-API-Key": GOOD_KEY})
    assert schema.status_code == 200
    assert schema.json()["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_nothing_outside_the_ui_directory_is_served(secured: Any) -> None:
    for path in ("/ui/../server/settings.py", "/ui/%2e%2e/server/settings.py", "/ui/..%2fsettings.py",
                 "/ui/vendor/../../routes/ui.py", "/uiv1/jobs", "/ui%2f../v1/jobs"):
        response = secured.get(path)
        assert response.status_code in (401, 404), (path, response.status_code)
        assert "BaseSettings" not in response.text and "mount_ui" not in response.text
    assert (UI_DIR / "index.html").is_file()

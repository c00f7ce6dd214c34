"""The dashboard's and docs pages' files name no other host: every asset is served by the API itself."""

from __future__ import annotations

import re
from pathlib import Path

from server.routes.ui import UI_DIR

OWN_FILES = [p for p in UI_DIR.iterdir() if p.suffix in (".html", ".js", ".css")]
VENDOR_FILES = [p for p in (UI_DIR / "vendor").iterdir() if p.suffix in (".js", ".css")]
#: URL-bearing attributes of HTML and url() of CSS: what a browser would load.
_HTML_REF = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]*)""", re.IGNORECASE)
_JS_IMPORT = re.compile(r"""\bimport\b[^;'"]*["']([^"']+)["']""")


def _external(ref: str) -> bool:
    return bool(re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", ref, re.IGNORECASE)) and not ref.startswith("data:")


def test_own_pages_scripts_and_styles_have_no_absolute_url() -> None:
    assert {p.name for p in OWN_FILES} >= {"index.html", "app.js", "docs.html", "redoc.html", "style.css"}
    for path in OWN_FILES:
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name
        refs = _HTML_REF.findall(text) + _CSS_URL.findall(text) + _JS_IMPORT.findall(text)
        assert not [r for r in refs if _external(r)], path.name


def test_vendored_files_load_nothing_from_another_host() -> None:
    names = {p.name for p in VENDOR_FILES}
    wanted = {"uPlot.iife.min.js", "uPlot.min.css", "swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"}
    assert wanted <= names
    for path in VENDOR_FILES:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".css":
            assert not [r for r in _CSS_URL.findall(text) if _external(r)], path.name
        assert "sourceMappingURL=" not in text.splitlines()[-1], path.name  # no map fetch from devtools
    # the one outside image ReDoc's bundle would load (its footer logo) is patched out
    assert "cdn.redoc.ly" not in (UI_DIR / "vendor" / "redoc.standalone.js").read_text(encoding="utf-8")


def test_every_vendored_library_ships_its_license() -> None:
    vendor = UI_DIR / "vendor"
    for license_file in ("uPlot.LICENSE", "swagger-ui.LICENSE", "redoc.LICENSE"):
        assert (vendor / license_file).stat().st_size > 500, license_file
    assert Path(vendor / "README.md").read_text(encoding="utf-8").count("|") > 10

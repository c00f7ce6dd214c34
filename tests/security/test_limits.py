"""Resource limits: body size, config sizes and queued jobs per key are bounded with a clear 4xx;
hostile bodies (deep nesting, huge numbers, wrong types) never reach a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import tiny_config
from tests.security.conftest import GOOD_KEY, OTHER_KEY

KEY = {"X-API-Key": GOOD_KEY}


def _body(**config_changes: Any) -> dict[str, Any]:
    config = tiny_config()
    for dotted, value in config_changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part] if not part.isdigit() else node[int(part)]
        node[leaf] = value
    return {"kind": "diagnostic", "config": config}


def test_oversize_body_by_content_length_is_413(secured: Any) -> None:
    big = b'{"kind": "diagnostic", "name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = secured.post("/v1/jobs", headers={**KEY, "Content-Type": "application/json"}, content=big)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


def test_oversize_chunked_body_is_413(secured: Any) -> None:
    def chunks() -> Any:
        yield b'{"kind": "diagnostic", "name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = secured.post("/v1/jobs", headers={**KEY, "Content-Type": "application/json"}, content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize(("change", "field"), [
    ({"phases__0__epochs": 10_001}, "config.phases.0.epochs"),
    ({"data__n_train": 10**12}, "config.data.n_train"),
    ({"data__n_val": 10**9}, "config.data.n_val"),
    ({"data__batch_size": 10**7}, "config.data.batch_size"),
    ({"model__d_model": 1 << 20}, "config.model.d_model"),
    ({"model__n_layers": 1000}, "config.model.n_layers"),
    ({"system__n_ris_h": 4096}, "config.system.n_ris_h"),
    ({"system__n_snapshots": 10**6}, "config.system.n_snapshots"),
    ({"checks__identifiability_scenes": 10**9}, "config.checks.identifiability_scenes"),
    ({"phases": [tiny_config()["phases"][0]] * 9}, "config.phases"),
])
def test_config_beyond_its_bounds_is_422_naming_the_field(secured: Any, change: dict[str, Any], field: str) -> None:
    response = secured.post("/v1/jobs", headers=KEY, json=_body(**change))
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}


def test_overlong_name_and_attempts_are_422(secured: Any) -> None:
    assert secured.post("/v1/jobs", headers=KEY, json={**_body(), "name": "n" * 201}).status_code == 422
    assert secured.post("/v1/jobs", headers=KEY, json={**_body(), "max_attempts": 100}).status_code == 422


def test_queued_jobs_per_key_are_bounded_with_429(secured: Any) -> None:
    for _ in range(3):  # max_queued_jobs_per_key=3 (conftest)
        assert secured.post("/v1/jobs", headers=KEY, json=_body()).status_code == 202
    refused = secured.post("/v1/jobs", headers=KEY, json=_body())
    assert refused.status_code == 429
    assert refused.headers["Retry-After"]
    assert "QUEUED" in refused.json()["detail"]
    assert secured.post("/v1/jobs", headers={"X-API-Key": OTHER_KEY}, json=_body()).status_code == 202


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"kind": "diagnostic", "config": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    b'{"kind": "diagnostic", "config": {"data": {"n_train": 1' + b"0" * 5000 + b"}}}",
    b'{"kind": "diagnostic", "config": {"data": {"n_train": 1e999}}}',
    b'{"kind": "diagnostic", "config": {"data": {"n_train": NaN}}}',
    b'{"kind": "diagnostic", "name": "\\ud800"}',
    b"\xff\xfe\x00\x00",
    b"",
    b"null",
])
def test_hostile_json_bodies_are_4xx_never_500(secured: Any, raw: bytes) -> None:
    response = secured.post("/v1/jobs", headers={**KEY, "Content-Type": "application/json"}, content=raw)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")


def test_non_json_body_is_415(secured: Any) -> None:
    response = secured.post("/v1/jobs", headers={**KEY, "Content-Type": "text/plain"}, content=b"kind=diagnostic")
    assert response.status_code == 415


@pytest.mark.parametrize(("field", "value"), [
    ("data__n_train", "64"), ("data__n_train", True), ("debug__ignore_cancel", "yes"), ("debug__ignore_cancel", 1),
    ("phases__0__amp", "false"),
])
def test_lax_coercions_the_schema_does_not_allow_are_422(secured: Any, field: str, value: Any) -> None:
    response = secured.post("/v1/jobs", headers=KEY, json=_body(**{field: value}))
    assert response.status_code == 422, response.text
    assert "config." + field.replace("__", ".") in {e["field"] for e in response.json()["errors"]}


def test_unknown_query_parameter_is_422_not_ignored(secured: Any) -> None:
    response = secured.get("/v1/jobs", headers=KEY, params={"stat": "QUEUED"})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "stat", "message": "unknown query parameter"}]


def test_405_names_every_allowed_method(secured: Any) -> None:
    response = secured.request("PUT", "/v1/jobs/some-id", headers=KEY)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"GET", "DELETE"}

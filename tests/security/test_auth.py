"""API keys: with keys configured every route but health and readiness answers 401 without a valid
key; keys are compared in constant time; a key never appears in a log line, a response or an error."""

from __future__ import annotations

import ast
import inspect
import logging
import re
import textwrap
from typing import Any

import pytest
from fastapi import FastAPI

import server.deps
from server.store.principals import ADMIN
from tests.security.conftest import GOOD_KEY, OPEN_PATHS, OTHER_KEY, WRONG_KEY, served_routes

JOB_ID = "00000000-0000-4000-8000-000000000000"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: JOB_ID if "id" in m.group(0) else "final", path)


def test_every_route_is_enumerated(secured_app: FastAPI) -> None:
    paths = {p for _, p in served_routes(secured_app)}
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/metrics", "/openapi.json", "/healthz"} <= paths


@pytest.mark.parametrize("key", [None, "", WRONG_KEY, GOOD_KEY + "x", GOOD_KEY[:-1], GOOD_KEY.upper()])
def test_every_route_but_health_answers_401_without_a_valid_key(secured_app: FastAPI, secured: Any,
                                                                key: str | None) -> None:
    headers = {} if key is None else {"X-API-Key": key}
    checked = 0
    for method, path in served_routes(secured_app):
        if path in OPEN_PATHS:
            continue
        response = secured.request(method, _concrete(path), headers=headers, json={} if method == "POST" else None)
        assert response.status_code == 401, (method, path, response.status_code, response.text)
        if method != "HEAD":
            assert response.headers["content-type"].startswith("application/problem+json")
        assert "WWW-Authenticate" in response.headers
        checked += 1
    assert checked >= 10


def test_health_and_readiness_stay_open(secured: Any) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200


@pytest.mark.parametrize("key", [GOOD_KEY, OTHER_KEY])
def test_each_configured_key_is_accepted_everywhere(secured_app: FastAPI, secured: Any, key: str) -> None:
    for method, path in served_routes(secured_app):
        response = secured.request(method, _concrete(path), headers={"X-API-Key": key},
                                   json={} if method == "POST" else None)
        assert response.status_code not in (401, 403), (method, path)
        assert response.status_code < 500, (method, path, response.text)


def _function_ast(fn: Any) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def _calls(node: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def test_keys_are_compared_with_hmac_compare_digest_against_every_key() -> None:
    fn = _function_ast(server.deps.key_matches)
    assert "hmac.compare_digest" in _calls(fn), "keys must be compared with hmac.compare_digest"
    loops = [n for n in ast.walk(fn) if isinstance(n, ast.For)]
    assert loops and all(not isinstance(n, ast.Break | ast.Return) for loop in loops for n in ast.walk(loop)), \
        "every configured key is compared (no early exit reveals which matched)"


def test_both_key_checks_go_through_the_constant_time_compare() -> None:
    assert "key_matches" in _calls(_function_ast(server.deps.authenticate))
    middleware = ast.parse(textwrap.dedent(inspect.getsource(server.deps.ApiKeyMiddleware)))
    assert "key_matches" in _calls(middleware)


def test_keys_are_never_compared_with_ordinary_equality() -> None:
    module = ast.parse(inspect.getsource(server.deps))
    for node in ast.walk(module):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn)
                                                 for op in node.ops):
            text = ast.unparse(node)
            assert "key" not in text.replace("open_paths", "") and "given" not in text, \
                f"non-constant-time comparison: {text}"


def test_keys_never_appear_in_logs_or_responses(secured: Any, caplog: pytest.LogCaptureFixture,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    for key in (WRONG_KEY, GOOD_KEY):
        headers = {"X-API-Key": key}
        for response in (
            secured.get("/v1/jobs", headers=headers),
            secured.get(f"/v1/jobs/{JOB_ID}", headers=headers),
            secured.post("/v1/jobs", headers=headers, json={"kind": "training", "config": {"bogus": 1}}),
            secured.post("/v1/jobs", headers=headers, content=b"{not json", ),
            secured.get("/metrics", headers=headers),
        ):
            bodies.append(response.text + str(dict(response.headers)))
    out, err = capfd.readouterr()
    records = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    for secret in (GOOD_KEY, OTHER_KEY, WRONG_KEY):
        assert secret not in records
        assert secret not in out + err
        assert all(secret not in body for body in bodies)


def test_settings_never_print_the_keys() -> None:
    from server.settings import Settings

    settings = Settings(api_keys=f"{GOOD_KEY},{OTHER_KEY}")  # type: ignore[arg-type]
    assert GOOD_KEY not in repr(settings) and GOOD_KEY not in str(settings.model_dump())
    with pytest.raises(ValueError) as info:
        Settings(api_keys=GOOD_KEY, heartbeat_interval_s=100, lease_timeout_s=1)  # type: ignore[arg-type]
    assert GOOD_KEY not in str(info.value)


def test_principal_is_a_digest_not_the_key(secured: Any, secured_app: FastAPI) -> None:
    from tests.factories import tiny_config

    response = secured.post("/v1/jobs", headers={"X-API-Key": GOOD_KEY},
                            json={"kind": "diagnostic", "config": tiny_config()})
    assert response.status_code == 202, response.text
    with secured_app.state.session_factory() as s:
        from server.store import get_job

        principal = get_job(s, response.json()["id"], principal=ADMIN).principal
    assert principal and GOOD_KEY not in principal and principal.startswith("key-")

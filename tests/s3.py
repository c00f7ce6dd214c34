"""A local S3-compatible server for the artifact-store tests: moto in server mode on a free port.

`moto_server` (session): the running server; `s3_env` (per test): the AWS variables that botocore reads pointed at
it, and a fresh bucket; it yields `s3://<bucket>/artifacts`, an ARTIFACT_URL. Import the fixtures where needed:
`from tests.s3 import moto_server, s3_env  # noqa: F401`.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

#: What botocore needs besides the endpoint; moto accepts any credentials.
AWS_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoS3:
    """A moto server in a thread of the test process; `stop()`/`start()` take the store away and back."""

    port: int
    server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def env(self) -> dict[str, str]:
        return {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def make_bucket(self) -> str:
        import boto3

        name = f"ris-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_client_kwargs()).create_bucket(Bucket=name)
        return name


def _client_kwargs() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3]:
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    pytest.importorskip("s3fs", reason="s3fs is the [s3] extra")
    server = MotoS3(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point botocore at the moto server for this test; returns the ARTIFACT_URL of a fresh bucket."""
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{moto_server.make_bucket()}/artifacts"

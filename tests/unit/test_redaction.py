"""Credentials never reach MLflow params, ``job_config.json`` or messages: the redaction rules, and a
real call site (the tracking-server check against a real local HTTP server). No Ray, no MLflow store:
the driver's params through a real store are in tests/integration/test_redaction_mlflow.py and
``job_config.json`` in test_checkpoint_security.py."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from jobs.common.redaction import MASK, is_secret_name, redact_mapping, redact_text


@pytest.mark.parametrize("text, expected", [
    ("postgresql://user:PASSWORD@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg2://mlflow:pw@db:5432/mlflow", "postgresql+psycopg2://mlflow:***@db:5432/mlflow"),
    ("https://user:token@host", "https://user:***@host"),
    ("https://user:p@ss@host:5000/api", "https://user:***@host:5000/api"),  # a raw "@" in the password
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Date=20261127&X-Amz-Signature=abc123&X-Amz-Credential=AKIA%2F1",
     "https://b.s3.amazonaws.com/k?X-Amz-Date=20261127&X-Amz-Signature=***&X-Amz-Credential=***"),
    ("https://acct.blob.core.windows.net/c/f?sv=2022&sig=zz%3D&se=2026",
     "https://acct.blob.core.windows.net/c/f?sv=2022&sig=***&se=2026"),
    ("http://host/api?token=t0k&page=2", "http://host/api?token=***&page=2"),
    ("host=db user=me password=hunter2 dbname=x", "host=db user=me password=*** dbname=x"),
    ("server http://a:b@h:1 is unreachable (timed out)", "server http://a:***@h:1 is unreachable (timed out)"),
])
def test_credentials_in_uris_and_dsns_are_masked(text: str, expected: str):
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    "sqlite:////tmp/runs/mlflow.db", "file:///data/mlflow", "http://mlflow:5000", "http://user@host/",
    "s3://bucket/scored/date=2026-11-25/token=1/part-0.parquet", "models:/sentiment@production",
    "runs:/0123abcd/model", "keyword=monkey",
])
def test_text_without_credentials_is_unchanged(text: str):
    assert redact_text(text) == text


@pytest.mark.parametrize("name", [
    "password", "db_passwd", "secret", "aws_secret_access_key", "access_key", "api_key", "apiKey", "key",
    "storage.key", "auth_token", "env.AWS_SESSION_TOKEN", "X-Amz-Signature", "sig", "credentials", "private_key",
])
def test_secret_names(name: str):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "id_column", "keyword", "monkey", "key_id", "AWSAccessKeyId", "key_column", "sort_key", "partition_key",
    "max_tokens_per_batch", "tokenize_cpus", "source_tokenizer_json", "tokens", "tracking.tracking_uri",
    "secrets.region",  # only the last dotted part names the value
])
def test_names_that_are_not_secrets(name: str):
    assert not is_secret_name(name)


def test_mappings_keep_keys_and_mask_values_at_every_level():
    config = {"tracking": {"tracking_uri": "https://u:tok@mlflow.example"}, "api_key": "k1", "id_column": "id",
              "storage": {"options": {"aws_secret_access_key": "s3cr3t", "region": "eu"}}, "password": None,
              "use_auth_token": True, "paths": ["s3://b/x?X-Amz-Signature=sig1", "local/dir"], "epochs": 3}
    assert redact_mapping(config) == {
        "tracking": {"tracking_uri": "https://u:***@mlflow.example"}, "api_key": MASK, "id_column": "id",
        "storage": {"options": {"aws_secret_access_key": MASK, "region": "eu"}},
        "password": None,  # unset stays visible as unset
        "use_auth_token": True,  # a flag holds no secret
        "paths": ["s3://b/x?X-Amz-Signature=***", "local/dir"], "epochs": 3}
    flat = {"tracking.tracking_uri": "postgresql://u:pw@h/db", "storage.access_key": "AKIA", "data.id_column": "id"}
    assert redact_mapping(flat) == {"tracking.tracking_uri": "postgresql://u:***@h/db", "storage.access_key": MASK,
                                    "data.id_column": "id"}


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 -- http.server's name
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_tracking_server_check_neither_trips_on_nor_echoes_uri_credentials():
    from jobs.common.tracking import check_reachable

    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        check_reachable(f"http://alice:S3cretPw@127.0.0.1:{port}", timeout_s=5)  # /health needs no login
        server.shutdown()
        server.server_close()
        with pytest.raises(RuntimeError) as unreachable:
            check_reachable(f"http://alice:S3cretPw@127.0.0.1:{port}", timeout_s=2)
        assert "S3cretPw" not in str(unreachable.value) and "alice:***@127.0.0.1" in str(unreachable.value)
    finally:
        server.server_close()

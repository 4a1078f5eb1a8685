"""Credentials out of what the jobs log, save beside checkpoints or print.

The whole config goes to MLflow params, to each checkpoint's ``job_config.json`` and into
messages; whoever can read those must not learn a password from it. Two kinds of secret are
masked with ``***``:

- credentials inside a URI or DSN anywhere in a string: the password of the userinfo
  (``postgresql://user:PASSWORD@host/db``, ``https://user:TOKEN@host``; the user name stays)
  and the value of a secret-looking parameter (``?X-Amz-Signature=...``, ``&token=...``,
  ``password=...`` in a libpq DSN);
- the value of a setting whose name says it is secret (``password``, ``api_key``,
  ``aws_secret_access_key``, ``auth_token``).

A name is judged by whole words (split at ``.``, ``_``, ``-`` and camelCase humps, only its
last dotted part counts), so ``keyword``, ``monkey``, ``id_column`` and ``max_tokens_per_batch``
stay visible. ``key`` is secret only as the last word (``access_key``, not ``key_id`` or
``key_column``) and not after a word that makes it a data key (``sort_key``, ``partition_key``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "token", "apikey", "credential",
                           "credentials", "signature", "sig", "authorization"})
_DATA_KEY_WORDS = frozenset({"sort", "partition", "primary", "foreign", "join", "group", "metric", "dedup"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# scheme://user:password@ : the password runs to the last "@" before the path, so a raw "@" in it is covered
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*):(?P<password>[^\s/?#]*)@")
# name=value in a query string, a DSN or a message; only secret-looking names are masked
_ASSIGNMENT = re.compile(r"(?P<head>(?:^|(?<=[?&;\s,(]))(?P<name>[A-Za-z][\w.\-]*)=)(?P<value>[^&;\s#'\",)]*)")


def is_secret_name(name: str) -> bool:
    words = [w.lower() for w in _WORD.findall(str(name).rsplit(".", 1)[-1])]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return bool(words) and words[-1] == "key" and (len(words) == 1 or words[-2] not in _DATA_KEY_WORDS)


def redact_text(text: str) -> str:
    """``text`` with URI passwords and secret-looking ``name=value`` values masked."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _ASSIGNMENT.sub(lambda m: m["head"] + (MASK if m["value"] and is_secret_name(m["name"]) else m["value"]),
                           text)


def redact_value(name: str, value: Any) -> Any:
    if value is None or value == "" or isinstance(value, bool):  # unset and on/off flags hold no secret
        return value
    if is_secret_name(name):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(name, v) for v in value]
    return value


def redact_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with secret values masked and keys kept: flat (MLflow params) or nested (``job_config.json``)."""
    return {key: redact_value(str(key), value) for key, value in data.items()}

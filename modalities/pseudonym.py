"""Keyed-hash pseudonyms for patients.

A pseudonym is ``P`` + 16 hex digits of HMAC-SHA256(secret, raw patient ID). The secret
comes from ``CLINFUSE_PSEUDONYM_KEY``; the same raw ID always maps to the same pseudonym
under one secret, and without the secret the mapping cannot be reversed or recomputed.
Demo and test runs may use a fixed, clearly named demo key.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from modalities.errors import ConfigError

KEY_ENV = "CLINFUSE_PSEUDONYM_KEY"
DEMO_KEY = "clinfuse-demo-key-not-for-patient-data"
MIN_KEY_LENGTH = 16


class Pseudonymizer:
    """Map raw patient IDs to stable pseudonyms under one secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{KEY_ENV} is too short ({len(secret)} characters); use at least "
                f"{MIN_KEY_LENGTH} random characters, e.g. `openssl rand -hex 32`"
            )
        self._key = secret.encode()

    def __call__(self, raw_id: str) -> str:
        digest = hmac.new(self._key, str(raw_id).strip().encode(), hashlib.sha256).hexdigest()
        return "P" + digest[:16]

    @property
    def key_id(self) -> str:
        """A short fingerprint of the secret (safe to log) to detect key changes."""
        return hashlib.sha256(b"clinfuse-key-id:" + self._key).hexdigest()[:12]

    @classmethod
    def from_env(cls, allow_demo: bool = False) -> Pseudonymizer:
        """Build from ``CLINFUSE_PSEUDONYM_KEY``; only demo/test runs may use the demo key."""
        secret = os.environ.get(KEY_ENV)
        if secret:
            return cls(secret)
        if allow_demo:
            return cls(DEMO_KEY)
        raise ConfigError(
            f"{KEY_ENV} is not set. Patient IDs are pseudonymized with a keyed hash; set it "
            f"to a secret of at least {MIN_KEY_LENGTH} characters (keep it stable: changing "
            "it changes every pseudonym), or use `clinfuse demo` for synthetic data"
        )

"""Create (or re-key) the MLflow account the clinfuse worker signs in with.

Runs once per ``docker compose up`` as the ``mlflow-init`` service, signed in as the MLflow
admin (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``). The worker then never
holds the admin password: a leaked worker secret can log runs, not manage users.

Idempotent: an existing account gets its password set to the current one, so rotating
``CLINFUSE_MLFLOW_PASSWORD`` in ``.env`` and re-running ``up`` is the whole rotation.
"""

from __future__ import annotations

import os
import sys


def ensure_user(tracking_uri: str, username: str, password: str) -> str:
    """Create ``username`` or update its password; return ``"created"`` or ``"updated"``."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
    from mlflow.server import get_app_client

    client = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        client.get_user(username)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        client.create_user(username, password)
        return "created"
    client.update_user_password(username, password)
    return "updated"


def main() -> int:
    """Read the settings from the environment; exit 2 with a clear message when one is missing."""
    names = ("MLFLOW_TRACKING_URI", "CLINFUSE_MLFLOW_USERNAME", "CLINFUSE_MLFLOW_PASSWORD")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        print(f"mlflow-init: set {', '.join(missing)} (see docs/deploy.md)", file=sys.stderr)
        return 2
    uri, user, password = (os.environ[n] for n in names)
    outcome = ensure_user(uri, user, password)
    # The account name is configuration, not PHI or a secret; the password is never printed.
    print(f"mlflow-init: worker account {user!r} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

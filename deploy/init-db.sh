#!/usr/bin/env bash
# Create clinfuse's PostgreSQL roles and databases from the environment.
#
# The postgres image runs this once, on the first start with an empty data volume
# (/docker-entrypoint-initdb.d). It is idempotent, so an admin can also re-run it by hand,
# e.g. to rotate a role's password after changing it in .env:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-init-db.sh
#
#   role mlflow   -> databases mlflow (tracking + registry) and mlflow_auth (basic-auth users)
#   role prefect  -> database  prefect (Prefect server)
#   role clinfuse -> database  clinfuse (the predictions table)
#
# Passwords come only from the environment and reach psql through \getenv, never through
# argv (visible in `ps`) or the shell's expansion of SQL text (no injection via quotes).
# Role and database names may be overridden (tests use unique names on a shared server).
set -euo pipefail

: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set: generate one with openssl rand -hex 32}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD is not set: generate one with openssl rand -hex 32}"
: "${CLINFUSE_DB_PASSWORD:?CLINFUSE_DB_PASSWORD is not set: generate one with openssl rand -hex 32}"

MLFLOW_DB_USER=${MLFLOW_DB_USER:-mlflow}
MLFLOW_DB_NAME=${MLFLOW_DB_NAME:-mlflow}
MLFLOW_AUTH_DB_NAME=${MLFLOW_AUTH_DB_NAME:-mlflow_auth}
PREFECT_DB_USER=${PREFECT_DB_USER:-prefect}
PREFECT_DB_NAME=${PREFECT_DB_NAME:-prefect}
CLINFUSE_DB_USER=${CLINFUSE_DB_USER:-clinfuse}
CLINFUSE_DB_NAME=${CLINFUSE_DB_NAME:-clinfuse}

run_psql() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
        --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}"
}

# ensure_role ROLE PASSWORD_VARIABLE_NAME
ensure_role() {
    INIT_ROLE="$1" INIT_PASSWORD="${!2}" run_psql <<'EOSQL'
\getenv role INIT_ROLE
\getenv password INIT_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
EOSQL
}

# ensure_database DATABASE OWNER_ROLE: owned by its role, closed to everyone else.
ensure_database() {
    INIT_DB="$1" INIT_ROLE="$2" run_psql <<'EOSQL'
\getenv db INIT_DB
\getenv role INIT_ROLE
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
ALTER DATABASE :"db" OWNER TO :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT ALL ON DATABASE :"db" TO :"role";
EOSQL
}

ensure_role "$MLFLOW_DB_USER" MLFLOW_DB_PASSWORD
ensure_role "$PREFECT_DB_USER" PREFECT_DB_PASSWORD
ensure_role "$CLINFUSE_DB_USER" CLINFUSE_DB_PASSWORD
ensure_database "$MLFLOW_DB_NAME" "$MLFLOW_DB_USER"
ensure_database "$MLFLOW_AUTH_DB_NAME" "$MLFLOW_DB_USER"
ensure_database "$PREFECT_DB_NAME" "$PREFECT_DB_USER"
ensure_database "$CLINFUSE_DB_NAME" "$CLINFUSE_DB_USER"
echo "clinfuse init-db: roles and databases ready"

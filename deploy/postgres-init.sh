#!/bin/sh
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as
# the owner of the audit database (POSTGRES_USER). Creates, unless they exist:
#   fracture_triage_app   NOLOGIN: INSERT and SELECT on the audit trail, nothing more
#                         (the migrations grant its privileges, db/roles.py)
#   fracture_triage_node  LOGIN, member of fracture_triage_app: the node and the workers
#   prefect               LOGIN, owner of Prefect's own database `prefect`
# Passwords come from the Docker secrets (SECRETS_DIR, default /run/secrets); none is
# written here or in docker-compose.yml. tests/test_compose.py runs this script against
# a real PostgreSQL.
set -eu
secrets=${SECRETS_DIR:-/run/secrets}
node_password=$(cat "$secrets/db_node_password")
prefect_password=$(cat "$secrets/prefect_db_password")
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v node_password="$node_password" -v prefect_password="$prefect_password" <<'SQL'
SELECT 'CREATE ROLE fracture_triage_app NOLOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fracture_triage_app') \gexec
SELECT 'CREATE ROLE fracture_triage_node LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fracture_triage_node') \gexec
ALTER ROLE fracture_triage_node PASSWORD :'node_password';
GRANT fracture_triage_app TO fracture_triage_node;
SELECT 'CREATE ROLE prefect LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') \gexec
ALTER ROLE prefect PASSWORD :'prefect_password';
SELECT 'CREATE DATABASE prefect OWNER prefect'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect') \gexec
SQL

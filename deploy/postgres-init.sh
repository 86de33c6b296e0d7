#!/bin/sh
# Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d), as
# the owner of the audit database (POSTGRES_USER). Creates:
#   fracture_triage_app   NOLOGIN: INSERT and SELECT on the audit trail, nothing more
#                         (the migrations grant its privileges, db/roles.py)
#   fracture_triage_node  LOGIN, member of fracture_triage_app: the node and the workers
#   prefect               LOGIN, owner of Prefect's own database
# Passwords come from the Docker secrets; none is written here or in docker-compose.yml.
set -eu
node_password=$(cat /run/secrets/db_node_password)
prefect_password=$(cat /run/secrets/prefect_db_password)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v node_password="$node_password" -v prefect_password="$prefect_password" <<'SQL'
CREATE ROLE fracture_triage_app NOLOGIN;
CREATE ROLE fracture_triage_node LOGIN PASSWORD :'node_password' IN ROLE fracture_triage_app;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
SQL

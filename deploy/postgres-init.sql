-- Prefect's own database beside the audit DB (docker-compose.yml). Change the password
-- to match PREFECT_DB_PASSWORD in the environment.
CREATE ROLE prefect LOGIN PASSWORD 'change-me-too';
CREATE DATABASE prefect OWNER prefect;

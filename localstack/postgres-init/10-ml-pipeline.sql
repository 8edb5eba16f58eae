-- Run once by the postgres image on an empty data directory (localstack/docker-compose.yml).
-- Same role and database as localstack/postgres.sh creates on the host.
CREATE ROLE ml_pipeline LOGIN CREATEDB PASSWORD 'ml_pipeline';
CREATE DATABASE ml_pipeline OWNER ml_pipeline;

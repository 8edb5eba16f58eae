# shellcheck shell=bash
# Connection settings for the local services started by localstack/up.sh (or by
# localstack/docker-compose.yml). Source it:   . localstack/env.sh
# Queue URLs and the bucket name come from the deployed stack: see .local/stack.env
# (written by up.sh), or run commands through localstack/with-env.sh.
export AWS_ENDPOINT_URL=http://127.0.0.1:4566
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export DATABASE_URL=postgres://ml_pipeline:ml_pipeline@127.0.0.1:5432/ml_pipeline
export MONGODB_URI=mongodb://127.0.0.1:27017
# S3 emulators address buckets by path, not by virtual host.
export ML_PIPELINE_S3_FORCE_PATH_STYLE=true

-- Reference data of the banknote domain (CONTRACT.md section 5), the training data,
-- the training jobs, and the prediction aggregates the worker upserts after each batch.

CREATE TABLE units (
    code                text PRIMARY KEY,
    description         text NOT NULL,
    factor_to_canonical double precision NOT NULL CHECK (factor_to_canonical <> 0)
);

CREATE TABLE scanners (
    scanner_id text PRIMARY KEY,
    unit_code  text NOT NULL REFERENCES units (code),
    branch     text NOT NULL
);

CREATE TABLE issuers (
    issuer_code text PRIMARY KEY,
    name        text NOT NULL
);

-- alias_key is the alias folded by the pipeline spec's standardization rules; requests are
-- folded the same way and looked up by it.
CREATE TABLE issuer_aliases (
    alias_key   text PRIMARY KEY,
    alias       text NOT NULL,
    issuer_code text NOT NULL REFERENCES issuers (issuer_code)
);

-- Labelled examples. features holds canonical values by feature name, so a spec that adds a
-- feature needs no schema change; request holds the raw request row when one exists.
CREATE TABLE training_examples (
    dataset    text NOT NULL,
    example_id text NOT NULL,
    label      smallint NOT NULL CHECK (label IN (0, 1)),
    features   jsonb NOT NULL,
    request    jsonb,
    PRIMARY KEY (dataset, example_id)
);

CREATE TABLE training_jobs (
    job_id           bigserial PRIMARY KEY,
    model_name       text NOT NULL,
    model_version    bigint,
    status           text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'dry_run')),
    data_source      text NOT NULL,
    data_fingerprint text NOT NULL,
    rows             bigint NOT NULL,
    params           jsonb NOT NULL,
    metrics          jsonb,
    data_seconds     double precision,
    train_seconds    double precision,
    eval_seconds     double precision,
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

CREATE INDEX training_jobs_model ON training_jobs (model_name, started_at DESC);

-- Counts and score sums per minute, model version, issuer and label: a month of traffic is a
-- few thousand rows instead of every prediction.
CREATE TABLE prediction_aggregates (
    minute        timestamptz NOT NULL,
    model_name    text NOT NULL,
    model_version text NOT NULL,
    issuer_code   text NOT NULL,
    label         text NOT NULL,
    predictions   bigint NOT NULL,
    score_sum     double precision NOT NULL,
    PRIMARY KEY (minute, model_name, model_version, issuer_code, label)
);

-- How much of the traffic each enrichment source could serve, per minute.
CREATE TABLE enrichment_coverage (
    minute     timestamptz NOT NULL,
    model_name text NOT NULL,
    source     text NOT NULL,
    hits       bigint NOT NULL,
    misses     bigint NOT NULL,
    PRIMARY KEY (minute, model_name, source)
);

-- Watching the served model (README "Watching the model"): what the worker's monitor measured
-- each interval (ML_PIPELINE_MONITOR_INTERVAL_SECS), one multi-row insert per interval.

-- Drift of each served feature against the statistics stored with the model version at
-- training: the population stability index of the rolling window
-- (ML_PIPELINE_DRIFT_WINDOW_SECS) and the share of its values outside the training range.
-- `retrain` reads it for its drift trigger, `models compare` for its figures.
CREATE TABLE drift_observations (
    observed_at   timestamptz NOT NULL,
    model_name    text NOT NULL,
    model_version bigint NOT NULL,
    feature       text NOT NULL,
    psi           double precision NOT NULL,
    out_of_range  double precision NOT NULL,
    window_rows   bigint NOT NULL,
    worker        text NOT NULL
);

CREATE INDEX drift_observations_model ON drift_observations (model_name, model_version, observed_at);

-- Shadow scoring (ML_PIPELINE_SHADOW_ALIAS): per interval, how many records the shadow model
-- scored beside the served one, how often it agreed, by how much its scores differed, and what
-- each model's prediction cost per record.
CREATE TABLE shadow_observations (
    observed_at        timestamptz NOT NULL,
    model_name         text NOT NULL,
    model_version      bigint NOT NULL,
    shadow_alias       text NOT NULL,
    shadow_version     bigint NOT NULL,
    records            bigint NOT NULL,
    agreed             bigint NOT NULL,
    score_diff_sum     double precision NOT NULL,
    score_diff_max     double precision NOT NULL,
    served_seconds     double precision NOT NULL,
    shadow_seconds     double precision NOT NULL,
    failures           bigint NOT NULL,
    skipped            bigint NOT NULL,
    worker             text NOT NULL
);

CREATE INDEX shadow_observations_model ON shadow_observations (model_name, observed_at);

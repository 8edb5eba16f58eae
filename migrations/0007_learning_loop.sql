-- The learning loop (README "The learning loop"): what the worker predicted, feedback turned
-- into labelled examples with their provenance, and retraining jobs with their decision.

-- Every logged prediction (ML_PIPELINE_PREDICTION_LOG): one row per record, written by the
-- worker with COPY, off the answer's path. Partitioned by day so that retention
-- (ML_PIPELINE_PREDICTION_LOG_RETENTION_DAYS) drops whole partitions instead of deleting rows;
-- the worker creates the partitions (prediction_log_pYYYYMMDD) ahead of the rows that need them.
-- record_id is the record's id, or a seed bundle's subject; position its row in the bundle.
-- features are canonical (before the scaler), in the order prediction_log_models names them.
CREATE TABLE prediction_log (
    predicted_at  timestamptz NOT NULL,
    bundle_id     text NOT NULL,
    record_id     text NOT NULL,
    position      integer NOT NULL,
    model_name    text NOT NULL,
    model_version bigint NOT NULL,
    class         smallint NOT NULL,
    score         double precision NOT NULL,
    features      double precision[] NOT NULL
) PARTITION BY RANGE (predicted_at);

CREATE INDEX prediction_log_record ON prediction_log (bundle_id, record_id);

-- What a logged model version's features and classes are called (class i is classes[i + 1]).
CREATE TABLE prediction_log_models (
    model_name    text NOT NULL,
    model_version bigint NOT NULL,
    features      text[] NOT NULL,
    classes       text[] NOT NULL,
    PRIMARY KEY (model_name, model_version)
);

-- When an example got its current label, and where it came from: for feedback, the bundle,
-- record, model version and prediction it corrects or confirms, and the feedback message.
ALTER TABLE training_examples
    ADD COLUMN labelled_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN provenance jsonb;

CREATE INDEX training_examples_labelled ON training_examples (dataset, labelled_at);

-- One row per feedback message applied, with what became of its items. A redelivered message
-- keeps its first row (its items are idempotent anyway).
CREATE TABLE feedback_messages (
    message_id  text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    format      text NOT NULL CHECK (format IN ('ratings', 'labels')),
    bundle_id   text NOT NULL,
    dataset     text NOT NULL,
    items       integer NOT NULL,
    added       integer NOT NULL,
    changed     integer NOT NULL,
    unchanged   integer NOT NULL,
    not_logged  integer NOT NULL,
    ambiguous   integer NOT NULL,
    -- The first 100 record ids that matched no logged prediction, or more than one.
    unmatched   text[] NOT NULL
);

CREATE INDEX feedback_messages_received ON feedback_messages (received_at);

-- A retraining job (`ml-pipeline retrain`) is a training job with what started it and what the
-- champion/challenger gate decided.
ALTER TABLE training_jobs
    ADD COLUMN kind text NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'retrain')),
    ADD COLUMN trigger jsonb,
    ADD COLUMN decision jsonb;

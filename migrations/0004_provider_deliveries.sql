-- The ledger of provider deliveries (`ml-pipeline providers ingest` and `providers rollback`):
-- one row per delivery, written when it starts (status running) and again when it ends.
-- A crashed ingest leaves its row running; running the same delivery again resumes it under
-- the same delivery_id. The documents themselves live in MongoDB: each current document names
-- the delivery that wrote it (`_delivery`), and the versions it replaced are kept in the
-- `<collection>_history` collection.
CREATE TABLE provider_deliveries (
    delivery_id    text PRIMARY KEY,
    provider       text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('ingest', 'rollback')),
    -- Where the rows came from (a path or s3:// URL); for a rollback, the delivery undone.
    source         text NOT NULL,
    -- sha256:<hex> of the delivery's bytes as read (before decompression); null for a rollback
    -- and for an ingest that failed before its first pass ended.
    content_hash   text,
    status         text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'unchanged')),
    rows           bigint NOT NULL DEFAULT 0,
    accepted       bigint NOT NULL DEFAULT 0,
    unchanged      bigint NOT NULL DEFAULT 0,
    updated        bigint NOT NULL DEFAULT 0,
    inserted       bigint NOT NULL DEFAULT 0,
    refused        bigint NOT NULL DEFAULT 0,
    -- Rollbacks only: documents removed (the undone delivery had inserted them) and documents
    -- left alone because a later delivery changed them again.
    removed        bigint NOT NULL DEFAULT 0,
    changed_since  bigint NOT NULL DEFAULT 0,
    -- The first refused rows: [{"line": 12, "reason": "..."}, ...]; `refused` counts them all.
    refused_sample jsonb NOT NULL DEFAULT '[]'::jsonb,
    error          text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    -- A rollback: the delivery it undid.
    rolls_back     text REFERENCES provider_deliveries (delivery_id),
    -- An ingest that was undone: the rollback that did it.
    rolled_back_by text REFERENCES provider_deliveries (delivery_id)
);

-- "Was this content already delivered?" and "is a delivery of this content still running?"
CREATE INDEX provider_deliveries_content ON provider_deliveries (provider, content_hash);
CREATE INDEX provider_deliveries_started ON provider_deliveries (started_at);

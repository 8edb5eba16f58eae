-- Every HTTP request `ml-pipeline providers ingest` made to a provider's API: one row per
-- attempt of one page (a retried page has several), bounded by the pages of each delivery.
-- The provider report (issue 14, item 3) reads latency percentiles and the error rate per
-- provider from here. A request of a delivery that failed before its first pass ended is kept
-- under that failed delivery's row.
CREATE TABLE provider_requests (
    id          bigserial PRIMARY KEY,
    delivery_id text NOT NULL REFERENCES provider_deliveries (delivery_id),
    provider    text NOT NULL,
    -- The page's number in the delivery, from 1, and the attempt's number for that page.
    page        integer NOT NULL,
    attempt     integer NOT NULL,
    url         text NOT NULL,
    started_at  timestamptz NOT NULL,
    -- From sending to the whole body or the failure, in milliseconds.
    latency_ms  double precision NOT NULL,
    -- The HTTP status; null when there was no answer (timeout, connection error).
    status      integer,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'status', 'timeout', 'connection', 'malformed')),
    error       text
);

CREATE INDEX provider_requests_provider ON provider_requests (provider, started_at);
CREATE INDEX provider_requests_delivery ON provider_requests (delivery_id);

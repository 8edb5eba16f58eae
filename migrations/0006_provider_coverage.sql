-- Coverage per provider (`providers report`): besides the per-source rows (provider ''), the
-- worker writes one row per provider of the spec with source 'mongo', counting the records whose
-- note that provider's document alone could enrich (hits) or not (misses).
ALTER TABLE enrichment_coverage ADD COLUMN provider text NOT NULL DEFAULT '';
ALTER TABLE enrichment_coverage DROP CONSTRAINT enrichment_coverage_pkey;
ALTER TABLE enrichment_coverage ADD PRIMARY KEY (minute, model_name, source, provider);
-- Provider '*' counts the records some provider could enrich (hits) or none could (misses).

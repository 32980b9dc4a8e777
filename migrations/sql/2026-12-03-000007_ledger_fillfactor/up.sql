-- A ledger row is written three times: inserted `queued`, claimed (`sending`), then its
-- outcome. No index covers the updated columns, so both updates can be HOT (no new index
-- entry) when the row's page has room for the new version. Pages filled to 100 % never do;
-- leaving 40 % free keeps the updates on the page. Measured only together with the other
-- ledger changes of the same commit (README, Capacity).
ALTER TABLE deliveries SET (fillfactor = 60);

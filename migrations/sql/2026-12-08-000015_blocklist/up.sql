-- The blocklist (issue 26) is the suppression list's `blocked` reason: the same keyed hashes,
-- refused at intake as well as never sent to.
ALTER TABLE suppressions DROP CONSTRAINT suppressions_reason;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason CHECK (reason IN ('opt_out_keyword',
    'unsubscribe_link', 'hard_bounce', 'complaint', 'provider_opt_out', 'admin', 'blocked'));
CREATE INDEX suppressions_blocked ON suppressions (contact_hash) WHERE reason = 'blocked';

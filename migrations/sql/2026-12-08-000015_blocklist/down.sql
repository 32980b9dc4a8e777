DROP INDEX suppressions_blocked;
DELETE FROM suppressions WHERE reason = 'blocked';
ALTER TABLE suppressions DROP CONSTRAINT suppressions_reason;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason CHECK (reason IN ('opt_out_keyword',
    'unsubscribe_link', 'hard_bounce', 'complaint', 'provider_opt_out', 'admin'));

-- Admin actions (SPEC §2.4, issue 12): who changed a campaign, redrove letters, erased a
-- respondent or failed to present the token. Append-only; `id` orders entries and is the
-- paging cursor. No personal data: respondents appear only as keyed hashes.
CREATE TABLE audit_log (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    action  text        NOT NULL,
    route   text        NOT NULL,
    outcome text        NOT NULL,
    status  smallint    NOT NULL,
    target  text,
    detail  jsonb       NOT NULL DEFAULT '{}'
);
-- "What happened to this campaign?" reads by target.
CREATE INDEX audit_log_target ON audit_log (target, id) WHERE target IS NOT NULL;

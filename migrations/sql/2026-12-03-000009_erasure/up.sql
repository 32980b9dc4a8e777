-- Erasure (POST /v1/respondents/erase, issue 12) finds a person's submissions by phone and
-- by e-mail in any case. Without these, an erasure reads every partition. Partial: a
-- respondent without the contact adds no entry. Cost: up to two index entries per stored
-- submission (README, "Erasure").
CREATE INDEX submissions_phone ON submissions (phone) WHERE phone IS NOT NULL;
CREATE INDEX submissions_email ON submissions (lower(email)) WHERE email IS NOT NULL;
-- Dead letters name a recipient; the erasure deletes the person's.
CREATE INDEX dead_letters_recipient ON dead_letters (lower(recipient)) WHERE recipient IS NOT NULL;

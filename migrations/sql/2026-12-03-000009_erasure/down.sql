DROP INDEX dead_letters_recipient;
DROP INDEX submissions_email;
DROP INDEX submissions_phone;

//! quizflow's cross-stage tests live in `tests/`: each drives the real pipeline (api, batcher,
//! workers, the mock provider) against a private nats-server and a fresh PostgreSQL database.

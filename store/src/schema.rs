//! diesel `table!` declarations of quizflow's tables (the SQL itself is in `migrations/sql`).
//! Bulk statements are written as SQL over `UNNEST` (diesel's DSL has no such insert); the
//! simple ones use these declarations.

diesel::table! {
    submission_ids (id) {
        id -> Uuid,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    submissions (id, received_at) {
        id -> Uuid,
        quiz_id -> Text,
        received_at -> Timestamptz,
        completed_at -> Timestamptz,
        score -> Nullable<Double>,
        phone -> Nullable<Text>,
        email -> Nullable<Text>,
        name -> Nullable<Text>,
        locale -> Nullable<Text>,
        answers -> Json,
        tags -> Array<Text>,
        metadata -> Json,
        idempotency_key -> Nullable<Text>,
        stream_seq -> BigInt,
        stored_at -> Timestamptz,
        erased_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    campaigns (id) {
        id -> Uuid,
        version -> Integer,
        name -> Text,
        active -> Bool,
        quiz_id -> Nullable<Text>,
        priority -> Text,
        definition -> Jsonb,
        starts_at -> Nullable<Timestamptz>,
        ends_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    campaign_versions (campaign_id, version) {
        campaign_id -> Uuid,
        version -> Integer,
        definition -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    deliveries (submission_id, campaign_id, channel, step) {
        submission_id -> Uuid,
        campaign_id -> Uuid,
        channel -> Text,
        campaign_version -> Integer,
        priority -> Text,
        status -> Text,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        history -> Jsonb,
        claim -> Nullable<Uuid>,
        lease_until -> Nullable<Timestamptz>,
        next_attempt_at -> Nullable<Timestamptz>,
        step -> SmallInt,
        due_at -> Nullable<Timestamptz>,
        // `calling_at` (migration 11) is written only by SQL text (`deliveries::start_calls`):
        // diesel's table! holds at most 16 columns without a feature this crate does not need.
    }
}

diesel::table! {
    erasures (contact) {
        contact -> Text,
        erased_at -> Timestamptz,
    }
}

diesel::table! {
    dead_letters (id) {
        id -> Uuid,
        kind -> Text,
        channel -> Nullable<Text>,
        submission_id -> Nullable<Uuid>,
        campaign_id -> Nullable<Uuid>,
        recipient -> Nullable<Text>,
        class -> Text,
        reason -> Text,
        attempts -> Integer,
        history -> Jsonb,
        payload -> Nullable<Binary>,
        failed_at -> Timestamptz,
        redriven_at -> Nullable<Timestamptz>,
        redrive_published_at -> Nullable<Timestamptz>,
        step -> SmallInt,
    }
}

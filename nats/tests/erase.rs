//! Erasure in the streams: a pack loses only the person's members, keeps the others' (with
//! their trace context), and the original record is gone; a second run finds nothing.

use async_nats::jetstream::message::PublishMessage;
use quizflow_core::{parse_submission, IdempotencyKey, QuizId, SubmissionEnvelope, SubmissionId};
use quizflow_nats::{subjects, NatsSettings, Person, TopologyConfig};
use quizflow_testkit::NatsServer;

fn envelope(key: &str, phone: &str, email: &str) -> SubmissionEnvelope {
    let quiz = QuizId::parse("promo").expect("quiz");
    let key = IdempotencyKey::parse(key).expect("key");
    let sub = parse_submission(&serde_json::json!({
        "respondent": {"phone": phone, "email": email}, "score": 72
    }))
    .expect("valid");
    SubmissionEnvelope::new(
        SubmissionId::from_key(&quiz, &key),
        quiz,
        chrono::Utc::now(),
        Some(key),
        sub,
    )
}

async fn held(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut s = js.get_stream(stream).await.expect("stream");
    let state = s.info().await.expect("info").state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

#[tokio::test]
async fn given_a_pack_holding_the_person_then_only_their_members_go_and_the_rest_is_published_again(
) {
    let nats = NatsServer::start();
    let settings = NatsSettings::new(nats.url(), "erase-test");
    let client = quizflow_nats::connect(&settings).await.expect("connect");
    let js = quizflow_nats::jetstream(client, &settings);
    quizflow_nats::ensure_topology(&js, &TopologyConfig::default())
        .await
        .expect("topology");

    let others = [
        envelope("a", "+5511900000001", "bia@example.com"),
        envelope("c", "+5511900000003", "caio@example.com"),
    ];
    let person = envelope("b", "+5511987654321", "Ana@Example.com");
    // A pack of three, the person in the middle, each member with its trace header.
    let lines: Vec<String> = [&others[0], &person, &others[1]]
        .iter()
        .map(|e| serde_json::to_string(e).expect("json"))
        .collect();
    let mut headers = async_nats::HeaderMap::new();
    for i in 0..3 {
        headers.insert(
            quizflow_nats::trace_header(i).as_str(),
            format!("00-{:032x}-{:016x}-01", i + 1, i + 1).as_str(),
        );
    }
    let msg = PublishMessage::build()
        .payload(lines.join("\n").into())
        .headers(headers);
    js.send_publish(subjects::submission(&person.quiz_id), msg)
        .await
        .expect("publish")
        .await
        .expect("ack");
    // A pack of the person alone, and a dead letter naming them (any case of the e-mail).
    js.publish(
        subjects::submission(&person.quiz_id),
        serde_json::to_vec(&person).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    js.publish(
        subjects::dead_letter(subjects::DeadKind::Delivery, "email"),
        br#"{"recipient":"ana@EXAMPLE.com","reason":"bounce"}"#
            .to_vec()
            .into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    js.publish(
        subjects::dead_letter(subjects::DeadKind::Delivery, "sms"),
        br#"{"recipient":"+5511900000001","reason":"x"}"#.to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");

    let who = Person {
        phone: None,
        email: Some("ana@example.com".into()),
        submission_ids: Vec::new(),
    };
    let done = quizflow_nats::erase_person(&js, &who).await.expect("erase");
    assert_eq!(done.submissions, 2);
    assert_eq!(done.submission_messages, 2);
    assert_eq!(done.dead_letters, 1);
    assert_eq!(done.scanned, 4);

    // SUBMISSIONS: the two others, in one new pack, their trace context renumbered.
    let left = held(&js, subjects::SUBMISSIONS_STREAM).await;
    assert_eq!(left.len(), 1);
    let members: Vec<SubmissionEnvelope> = quizflow_nats::members(&left[0].payload)
        .map(|m| serde_json::from_slice(m).expect("decodes"))
        .collect();
    let ids: Vec<_> = members.iter().map(|e| e.submission_id).collect();
    assert_eq!(ids, vec![others[0].submission_id, others[1].submission_id]);
    let trace = |i: usize| {
        left[0]
            .headers
            .get(quizflow_nats::trace_header(i).as_str())
            .map(|v| v.to_string())
    };
    assert_eq!(trace(0), Some(format!("00-{:032x}-{:016x}-01", 1, 1)));
    assert_eq!(trace(1), Some(format!("00-{:032x}-{:016x}-01", 3, 3)));
    for m in &left {
        let text = String::from_utf8_lossy(&m.payload).to_lowercase();
        assert!(!text.contains("ana@example.com") && !text.contains("+5511987654321"));
    }
    // The erased records are gone, not only hidden: a read by sequence finds nothing.
    let s = js
        .get_stream(subjects::SUBMISSIONS_STREAM)
        .await
        .expect("stream");
    assert!(s.get_raw_message(1).await.is_err());
    assert!(s.get_raw_message(2).await.is_err());
    // DEAD_LETTERS: only the other person's letter remains.
    let dead = held(&js, subjects::DEAD_LETTERS_STREAM).await;
    assert_eq!(dead.len(), 1);
    assert!(String::from_utf8_lossy(&dead[0].payload).contains("+5511900000001"));

    // Again: nothing to do, and the others' pack is left alone.
    let again = quizflow_nats::erase_person(&js, &who).await.expect("erase");
    assert_eq!(
        (
            again.submissions,
            again.submission_messages,
            again.dead_letters
        ),
        (0, 0, 0)
    );
    assert_eq!(held(&js, subjects::SUBMISSIONS_STREAM).await.len(), 1);
}

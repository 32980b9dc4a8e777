//! Matching semantics, case by case, and the columnar matcher against the row-by-row
//! reference on random campaigns and submissions (proptest).

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use quizflow_batcher::matcher::reference;
use quizflow_batcher::{Match, Matcher};
use quizflow_core::{
    parse_campaign, parse_submission, Campaign, Channel, IdempotencyKey, QuizId,
    SubmissionEnvelope, SubmissionId,
};
use serde_json::{json, Value};
use std::sync::Arc;

fn campaign(body: Value) -> Arc<Campaign> {
    let spec = parse_campaign(&body).unwrap_or_else(|e| panic!("campaign {body}: {e:?}"));
    Arc::new(Campaign {
        id: uuid::Uuid::new_v4(),
        version: 1,
        spec,
        created_at: chrono::DateTime::UNIX_EPOCH,
        updated_at: Utc::now(),
    })
}

fn submission(quiz: &str, body: Value, received_s: i64) -> SubmissionEnvelope {
    let quiz = QuizId::parse(quiz).expect("quiz");
    let sub = parse_submission(&body).unwrap_or_else(|e| panic!("submission {body}: {e:?}"));
    let key = IdempotencyKey::parse(&uuid::Uuid::new_v4().to_string()).expect("key");
    let received = Utc
        .timestamp_opt(1_790_000_000 + received_s, 0)
        .single()
        .expect("time");
    SubmissionEnvelope::new(
        SubmissionId::from_key(&quiz, &key),
        quiz,
        received,
        Some(key),
        sub,
    )
}

fn sms(all: Value, any: Value) -> Value {
    json!({"name": "c", "quiz_id": null, "match": {"all": all, "any": any}, "actions": [{"channel": "sms", "template": "hi"}]})
}

fn matches(c: Value, s: Value) -> bool {
    let c = campaign(c);
    let batch = vec![submission("q1", s, 0)];
    let got = !Matcher::new([c.clone()]).match_batch(&batch).is_empty();
    assert_eq!(
        got,
        !reference::match_batch(&[c], &batch).is_empty(),
        "matcher and reference disagree"
    );
    got
}

const PHONE: &str = "+5511987654321";

#[test]
fn ops_case_by_case() {
    let s = json!({"respondent": {"phone": PHONE, "locale": "pt-BR", "name": "Ana"}, "score": 72,
        "answers": [{"question": "q1", "value": "b"}, {"question": "age", "value": 31}, {"question": "likes", "value": ["x", "y"]}],
        "tags": ["promo-nov"], "metadata": {"utm_source": "tv"}, "completed_at": "2026-11-22T10:00:00Z"});
    let one = |field: &str, op: &str, value: Value| {
        matches(
            sms(
                json!([{"field": field, "op": op, "value": value}]),
                json!([]),
            ),
            s.clone(),
        )
    };
    assert!(one("score", "gte", json!(72)));
    assert!(!one("score", "gt", json!(72)));
    assert!(one("score", "lt", json!(72.5)));
    assert!(one("score", "eq", json!(72)));
    assert!(!one("score", "eq", json!("72")), "no coercion");
    assert!(one("answers.q1", "in", json!(["b", "c"])));
    assert!(!one("answers.q1", "not_in", json!(["b", "c"])));
    assert!(one("answers.age", "gte", json!(18)));
    assert!(one("answers.likes", "contains", json!("y")));
    assert!(one("answers.likes", "in", json!(["z", "x"])));
    assert!(one("tags", "contains", json!("promo-nov")));
    assert!(!one("tags", "contains", json!("other")));
    assert!(one("respondent.locale", "eq", json!("pt-BR")));
    assert!(one("respondent.name", "contains", json!("An")));
    assert!(one("respondent.name", "ne", json!("Bia")));
    assert!(one("metadata.utm_source", "eq", json!("tv")));
    assert!(one("quiz_id", "eq", json!("q1")));
    assert!(one("completed_at", "gte", json!("2026-11-01T00:00:00Z")));
    assert!(!one("completed_at", "lt", json!("2026-11-01T00:00:00Z")));
    assert!(one("respondent.email", "exists", json!(false)));
    assert!(!one("respondent.email", "exists", json!(true)));
    // A missing field satisfies only ne, not_in and exists:false.
    assert!(one("answers.missing", "ne", json!("a")));
    assert!(one("answers.missing", "not_in", json!(["a"])));
    assert!(!one("answers.missing", "eq", json!("a")));
    assert!(!one("answers.missing", "lt", json!(1)));
    assert!(!one("metadata.nope", "contains", json!("a")));
}

#[test]
fn empty_all_and_any_are_true_and_any_needs_one() {
    let s = json!({"respondent": {"phone": PHONE}, "score": 10});
    assert!(matches(sms(json!([]), json!([])), s.clone()));
    let any = json!([{"field": "score", "op": "gt", "value": 50}, {"field": "score", "op": "lt", "value": 20}]);
    assert!(matches(sms(json!([]), any), s.clone()));
    let none = json!([{"field": "score", "op": "gt", "value": 50}, {"field": "score", "op": "gt", "value": 60}]);
    assert!(!matches(sms(json!([]), none), s));
}

#[test]
fn quiz_scope_time_window_active_and_contact() {
    let c = campaign(
        json!({"name": "c", "quiz_id": "q1", "starts_at": "2026-09-21T00:00:00Z", "ends_at": "2027-01-01T00:00:00Z",
        "match": {}, "actions": [{"channel": "sms", "template": "a"}, {"channel": "email", "template": "b"}, {"channel": "webhook", "url": "http://h/x"}]}),
    );
    let inactive = campaign(
        json!({"name": "off", "active": false, "match": {}, "actions": [{"channel": "webhook", "url": "http://h/x"}]}),
    );
    let batch = vec![
        submission("q1", json!({"respondent": {"phone": PHONE}}), 0),
        submission("q2", json!({"respondent": {"phone": PHONE}}), 0),
        submission("q1", json!({"respondent": {"email": "a@b.co"}}), 0),
        submission("q1", json!({"respondent": {"phone": PHONE}}), -100_000_000),
    ];
    let m = Matcher::new([c.clone(), inactive.clone()]);
    let mut got = m.match_batch(&batch);
    got.sort_unstable();
    let want = vec![
        Match {
            row: 0,
            campaign: 0,
            channel: Channel::Sms,
            step: 0,
            action: 0,
        },
        Match {
            row: 0,
            campaign: 0,
            channel: Channel::Webhook,
            step: 0,
            action: 2,
        },
        Match {
            row: 2,
            campaign: 0,
            channel: Channel::Email,
            step: 0,
            action: 1,
        },
        Match {
            row: 2,
            campaign: 0,
            channel: Channel::Webhook,
            step: 0,
            action: 2,
        },
    ];
    assert_eq!(got, want);
    assert_eq!(reference::match_batch(&[c, inactive], &batch), want);
}

#[test]
fn several_actions_of_a_channel_are_steps_and_scheduled_ones_carry_their_due_time() {
    let c = campaign(json!({"name": "steps", "match": {}, "actions": [
        {"channel": "sms", "template": "welcome"},
        {"channel": "email", "template": "guest list", "send_at": "{{ metadata.event_at }}", "delay": "-1d"},
        {"channel": "sms", "template": "reminder", "delay": "2s"}
    ]}));
    let batch = vec![
        submission(
            "q1",
            json!({"respondent": {"phone": PHONE, "email": "a@b.co"},
            "metadata": {"event_at": "2027-03-10T19:00:00-03:00"}}),
            0,
        ),
        // No event date: its e-mail cannot be scheduled and is left out.
        submission(
            "q1",
            json!({"respondent": {"phone": PHONE, "email": "c@d.co"}}),
            0,
        ),
    ];
    let m = Matcher::new([c.clone()]);
    let mut got = m.match_batch(&batch);
    got.sort_unstable();
    let steps: Vec<(usize, Channel, u16, u16)> = got
        .iter()
        .map(|m| (m.row, m.channel, m.step, m.action))
        .collect();
    assert_eq!(
        steps,
        [
            (0, Channel::Sms, 0, 0),
            (0, Channel::Sms, 1, 2),
            (0, Channel::Email, 0, 1),
            (1, Channel::Sms, 0, 0),
            (1, Channel::Sms, 1, 2),
            (1, Channel::Email, 0, 1),
        ]
    );
    assert_eq!(reference::match_batch(&[c], &batch), got);
    let now: chrono::DateTime<chrono::Utc> = "2027-03-01T12:00:00Z".parse().expect("time");
    let rows = (0..batch.len()).collect();
    let jobs = m.jobs(&got, &batch, &rows, now);
    let due: Vec<(usize, Channel, u16, Option<String>)> = jobs
        .iter()
        .map(|j| {
            let row = batch
                .iter()
                .position(|b| b.submission_id == j.submission_id)
                .expect("row");
            (row, j.channel, j.step, j.due_at.map(|t| t.to_rfc3339()))
        })
        .collect();
    assert_eq!(
        due,
        [
            (0, Channel::Sms, 0, None),
            (0, Channel::Sms, 1, Some("2027-03-01T12:00:02+00:00".into())),
            (
                0,
                Channel::Email,
                0,
                Some("2027-03-09T22:00:00+00:00".into())
            ),
            (1, Channel::Sms, 0, None),
            (1, Channel::Sms, 1, Some("2027-03-01T12:00:02+00:00".into())),
        ]
    );
    // Each step is its own job: distinct ids, the first keeps the id it always had.
    assert_ne!(jobs[0].job_id, jobs[1].job_id);
    assert_eq!(
        jobs[0].job_id,
        quizflow_core::DeliveryJob::job_id(
            jobs[0].submission_id,
            jobs[0].campaign_id,
            Channel::Sms,
            0
        )
    );
}

// --- property test -------------------------------------------------------------------

fn arb_submission() -> impl Strategy<Value = (String, Value, i64)> {
    (
        prop::sample::select(vec!["q1", "q2", "q3"]),
        prop::option::of(0..100i32),
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(0..5i32),
        prop::collection::vec(prop::sample::select(vec!["t1", "t2", "t3"]), 0..3),
        prop::option::of(prop::sample::select(vec!["pt-BR", "en"])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["tv", "ig"])),
        0..1000i64,
    )
        .prop_map(
            |(quiz, score, q1, q2, tags, locale, phone, email, src, t)| {
                let mut answers = Vec::new();
                if let Some(v) = q1 {
                    answers.push(json!({"question": "q1", "value": v}));
                }
                if let Some(v) = q2 {
                    answers.push(json!({"question": "q2", "value": v}));
                }
                let mut respondent = serde_json::Map::new();
                if phone {
                    respondent.insert("phone".into(), json!(PHONE));
                }
                if email {
                    respondent.insert("email".into(), json!("a@b.co"));
                }
                if let Some(l) = locale {
                    respondent.insert("locale".into(), json!(l));
                }
                let mut body = json!({"answers": answers, "tags": tags, "respondent": respondent});
                if let Some(s) = score {
                    body["score"] = json!(s);
                }
                if let Some(s) = src {
                    body["metadata"] = json!({"src": s});
                }
                (quiz.to_owned(), body, t)
            },
        )
}

fn arb_predicate() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "score",
        "answers.q1",
        "answers.q2",
        "tags",
        "respondent.locale",
        "metadata.src",
        "quiz_id",
        "respondent.phone",
    ]);
    let op = prop::sample::select(vec![
        "eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists",
    ]);
    let scalar = prop_oneof![
        (0..100i32).prop_map(|n| json!(n)),
        prop::sample::select(vec!["a", "b", "t1", "t2", "pt-BR", "tv", "q1", "q2"])
            .prop_map(|s| json!(s)),
    ];
    (
        field,
        op,
        scalar.clone(),
        prop::collection::vec(scalar, 0..3),
        any::<bool>(),
    )
        .prop_map(|(f, op, v, list, b)| {
            let value = match op {
                "in" | "not_in" => json!(list),
                "exists" => json!(b),
                "gt" | "gte" | "lt" | "lte" => json!(v.as_i64().unwrap_or(50)),
                _ => v,
            };
            json!({"field": f, "op": op, "value": value})
        })
}

fn arb_campaign() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::sample::select(vec!["q1", "q2", "q9"])),
        prop::collection::vec(arb_predicate(), 0..3),
        prop::collection::vec(arb_predicate(), 0..3),
        prop::collection::vec(prop::sample::select(vec!["sms", "email", "webhook", "whatsapp"]), 1..3),
        any::<bool>(),
        prop::option::of((0..1000i64, 1..1000i64)),
    )
        .prop_map(|(quiz, all, any, channels, active, window)| {
            let mut actions: Vec<Value> = Vec::new();
            for c in channels {
                if actions.iter().any(|a| a["channel"] == c) {
                    continue;
                }
                actions.push(if c == "webhook" { json!({"channel": c, "url": "http://h/x"}) } else { json!({"channel": c, "template": "t"}) });
            }
            let mut body = json!({"name": "p", "active": active, "quiz_id": quiz, "match": {"all": all, "any": any}, "actions": actions});
            if let Some((start, len)) = window {
                let at = |s: i64| Utc.timestamp_opt(1_790_000_000 + s, 0).single().map(|t| t.to_rfc3339()).unwrap_or_default();
                body["starts_at"] = json!(at(start));
                body["ends_at"] = json!(at(start + len));
            }
            body
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn columnar_matcher_equals_row_by_row_reference(
        subs in prop::collection::vec(arb_submission(), 1..150),
        camps in prop::collection::vec(arb_campaign(), 0..12),
    ) {
        let batch: Vec<_> = subs.into_iter().map(|(q, b, t)| submission(&q, b, t)).collect();
        let campaigns: Vec<_> = camps.into_iter().map(campaign).collect();
        let mut got = Matcher::new(campaigns.iter().cloned()).match_batch(&batch);
        got.sort_unstable();
        let want = reference::match_batch(&campaigns, &batch);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn a_campaign_does_not_match_submissions_received_before_it_existed() {
    let spec = parse_campaign(&sms(json!([]), json!([]))).expect("valid");
    let created = Utc.timestamp_opt(1_790_000_100, 0).single().expect("time");
    let c = Arc::new(Campaign {
        id: uuid::Uuid::new_v4(),
        version: 1,
        spec,
        created_at: created,
        updated_at: created,
    });
    let batch = vec![
        submission("q1", json!({"respondent": {"phone": PHONE}}), 99),
        submission("q1", json!({"respondent": {"phone": PHONE}}), 100),
    ];
    let got = Matcher::new([c.clone()]).match_batch(&batch);
    assert_eq!(got.iter().map(|m| m.row).collect::<Vec<_>>(), [1]);
    assert_eq!(reference::match_batch(&[c], &batch), got);
}

#[test]
fn replay_drops_the_creation_bound_and_keeps_the_campaign_window() {
    // Created after the submissions (received at 1_790_000_000 + s).
    let mut late = (*campaign(sms(json!([]), json!([])))).clone();
    late.created_at = Utc.timestamp_opt(1_790_000_100, 0).single().expect("time");
    let late = Arc::new(late);
    let batch = vec![
        submission("q1", json!({"respondent": {"phone": PHONE}}), 0),
        submission("q1", json!({"respondent": {"phone": PHONE}}), 200),
    ];
    let live: Vec<usize> = Matcher::new([late.clone()])
        .match_batch(&batch)
        .iter()
        .map(|m| m.row)
        .collect();
    assert_eq!(live, [1], "live: only what arrived after the campaign");
    let mut replayed: Vec<usize> = Matcher::for_replay([late.clone()])
        .match_batch(&batch)
        .iter()
        .map(|m| m.row)
        .collect();
    replayed.sort_unstable();
    assert_eq!(replayed, [0, 1], "replay: history too");

    // starts_at / ends_at still bound a replay.
    let mut windowed = (*late).clone();
    windowed.spec.starts_at = Utc.timestamp_opt(1_790_000_050, 0).single();
    let got: Vec<usize> = Matcher::for_replay([Arc::new(windowed)])
        .match_batch(&batch)
        .iter()
        .map(|m| m.row)
        .collect();
    assert_eq!(got, [1]);
}

/// `send_at` sees what the action's message sees: `answers` as a map of question → value and
/// `campaign`. Before, a schedule got the raw answers list, so `{{ answers.event_at }}`,
/// which renders in the message, rendered empty in `send_at` and the reminder was dropped.
#[test]
fn send_at_templates_see_the_message_templates_context() {
    let c = campaign(json!({"name": "event", "match": {}, "actions": [
        {"channel": "sms", "template": "See you on {{ answers.event_at }}",
         "send_at": "{{ answers.event_at }}", "delay": "-1h"},
        {"channel": "sms", "template": "{{ campaign.name }}",
         "send_at": "{{ '2027-03-10T10:00:00Z' if campaign.name == 'event' else '' }}"}
    ]}));
    let batch = vec![submission(
        "q1",
        json!({"respondent": {"phone": PHONE},
               "answers": [{"question": "event_at", "value": "2027-03-10T19:00:00-03:00"}]}),
        0,
    )];
    let m = Matcher::new([c]);
    let got = m.match_batch(&batch);
    let now: chrono::DateTime<chrono::Utc> = "2027-03-01T12:00:00Z".parse().expect("time");
    let jobs = m.jobs(&got, &batch, &(0..1).collect(), now);
    let mut due: Vec<Option<String>> = jobs
        .iter()
        .map(|j| j.due_at.map(|t| t.to_rfc3339()))
        .collect();
    due.sort();
    assert_eq!(
        due,
        [
            Some("2027-03-10T10:00:00+00:00".to_owned()),
            Some("2027-03-10T21:00:00+00:00".to_owned())
        ]
    );
}

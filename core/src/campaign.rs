//! Campaigns (contract §2.4): what to match and what to send, validated with field paths.

use crate::{Channel, FieldProblem, Priority, QuizId, ValidationErrors};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A field a predicate reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Score,
    QuizId,
    CompletedAt,
    Tags,
    Phone,
    Email,
    Name,
    Locale,
    Answer(String),
    Metadata(String),
}

impl Field {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "score" => Field::Score,
            "quiz_id" => Field::QuizId,
            "completed_at" => Field::CompletedAt,
            "tags" => Field::Tags,
            "respondent.phone" => Field::Phone,
            "respondent.email" => Field::Email,
            "respondent.name" => Field::Name,
            "respondent.locale" => Field::Locale,
            other => {
                if let Some(q) = other
                    .strip_prefix("answers.")
                    .filter(|q| !q.is_empty() && q.len() <= 64)
                {
                    Field::Answer(q.to_owned())
                } else if let Some(k) = other.strip_prefix("metadata.").filter(|k| !k.is_empty()) {
                    Field::Metadata(k.to_owned())
                } else {
                    return None;
                }
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Field::Score => "score".into(),
            Field::QuizId => "quiz_id".into(),
            Field::CompletedAt => "completed_at".into(),
            Field::Tags => "tags".into(),
            Field::Phone => "respondent.phone".into(),
            Field::Email => "respondent.email".into(),
            Field::Name => "respondent.name".into(),
            Field::Locale => "respondent.locale".into(),
            Field::Answer(q) => format!("answers.{q}"),
            Field::Metadata(k) => format!("metadata.{k}"),
        }
    }
}

impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Field::parse(&raw).ok_or_else(|| serde::de::Error::custom(format!("unknown field {raw}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Contains,
    Exists,
}

impl Op {
    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(Value::String(raw.to_owned())).ok()
    }
}

/// `{"field", "op", "value"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicate {
    pub field: Field,
    pub op: Op,
    #[serde(default)]
    pub value: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MatchSpec {
    #[serde(default)]
    pub all: Vec<Predicate>,
    #[serde(default)]
    pub any: Vec<Predicate>,
}

/// One message to send when a submission matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub channel: Channel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// WhatsApp only: a template rendering to the URL of an image sent with the message (the
    /// body becomes its caption), e.g. `{{ qr_url(submission_id) }}` for a check-in code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Sent this long after the match (`"2h"`), or, with `send_at`, this long after (or, with a
    /// minus sign, before) that time. See [`crate::schedule`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Sent at this RFC 3339 time, or at the time a template over the submission renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    /// Recurring: sent at every occurrence of this cron pattern (in `timezone`) after the
    /// submission, up to `until`. See [`crate::schedule`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA time zone of `cron` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The last time a recurring action may be sent: RFC 3339, or a template over the
    /// submission (the event's date in `metadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// At most this many occurrences per submission (1 to 400); required when `cron` repeats
    /// more often than hourly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_occurrences: Option<u16>,
}

impl Action {
    /// When this action is sent; `None`: as soon as the submission matches.
    pub fn schedule(&self) -> Option<crate::schedule::Schedule> {
        crate::schedule::Schedule::new(self.delay.as_deref(), self.send_at.as_deref())
    }

    /// When a recurring action is sent; `None`: it is not recurring.
    pub fn recurrence(&self) -> Option<crate::schedule::Recurrence> {
        crate::schedule::Recurrence::new(
            self.cron.as_deref(),
            self.timezone.as_deref(),
            self.until.as_deref(),
            self.max_occurrences,
        )
    }

    /// How often a recurring action repeats (what the firer needs for the next occurrence).
    pub fn cadence(&self) -> Option<crate::schedule::Cadence> {
        crate::schedule::Cadence::new(
            self.cron.as_deref(),
            self.timezone.as_deref(),
            self.max_occurrences,
        )
    }
}

/// What a client sends to create or replace a campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignSpec {
    pub name: String,
    pub active: bool,
    pub quiz_id: Option<QuizId>,
    #[serde(rename = "match")]
    pub match_: MatchSpec,
    pub actions: Vec<Action>,
    pub priority: Priority,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
}

/// A stored campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: Uuid,
    pub version: i32,
    #[serde(flatten)]
    pub spec: CampaignSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const CAMPAIGN_KEYS: &[&str] = &[
    "name",
    "active",
    "quiz_id",
    "match",
    "actions",
    "priority",
    "starts_at",
    "ends_at",
];

fn problem(p: &mut Vec<FieldProblem>, field: impl Into<String>, problem: impl Into<String>) {
    p.push(FieldProblem {
        field: field.into(),
        problem: problem.into(),
    });
}

/// Validates a campaign body; every problem is reported with its path.
pub fn parse_campaign(body: &Value) -> Result<CampaignSpec, ValidationErrors> {
    let mut p = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(ValidationErrors(vec![FieldProblem {
            field: String::new(),
            problem: "the body must be a JSON object".into(),
        }]));
    };
    // Stored as `jsonb`, which cannot hold U+0000: refused up front with its path.
    let nul = crate::validate::nul_problems(body);
    if !nul.is_empty() {
        return Err(ValidationErrors(nul));
    }
    for k in obj.keys() {
        if !CAMPAIGN_KEYS.contains(&k.as_str()) {
            problem(&mut p, k, "unknown field");
        }
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => s.clone(),
        _ => {
            problem(&mut p, "name", "is required: 1 to 200 characters");
            String::new()
        }
    };
    let active = match obj.get("active") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problem(&mut p, "active", "must be a boolean");
            true
        }
    };
    let quiz_id = match obj.get("quiz_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => QuizId::parse(s)
            .map_err(|e| problem(&mut p, "quiz_id", e.to_string()))
            .ok(),
        Some(_) => {
            problem(&mut p, "quiz_id", "must be a string or null");
            None
        }
    };
    let match_ = match obj.get("match") {
        None | Some(Value::Null) => MatchSpec::default(),
        Some(Value::Object(m)) => parse_match(m, &mut p),
        Some(_) => {
            problem(&mut p, "match", "must be an object with `all` and `any`");
            MatchSpec::default()
        }
    };
    let actions = match obj.get("actions") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 20 => items
            .iter()
            .enumerate()
            .filter_map(|(i, a)| parse_action(a, &format!("actions[{i}]"), &mut p))
            .collect(),
        _ => {
            problem(&mut p, "actions", "is required: 1 to 20 actions");
            Vec::new()
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => Priority::Normal,
        Some(Value::String(s)) => Priority::parse(s).unwrap_or_else(|| {
            problem(&mut p, "priority", "must be high, normal or low");
            Priority::Normal
        }),
        Some(_) => {
            problem(&mut p, "priority", "must be high, normal or low");
            Priority::Normal
        }
    };
    let time = |key: &str, p: &mut Vec<FieldProblem>| match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| problem(p, key, "must be an RFC 3339 timestamp or null"))
            .ok(),
        Some(_) => {
            problem(p, key, "must be an RFC 3339 timestamp or null");
            None
        }
    };
    let starts_at = time("starts_at", &mut p);
    let ends_at = time("ends_at", &mut p);
    if let (Some(s), Some(e)) = (starts_at, ends_at) {
        if e <= s {
            problem(&mut p, "ends_at", "must be after starts_at");
        }
    }
    if p.is_empty() {
        Ok(CampaignSpec {
            name,
            active,
            quiz_id,
            match_,
            actions,
            priority,
            starts_at,
            ends_at,
        })
    } else {
        Err(ValidationErrors(p))
    }
}

fn parse_match(m: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> MatchSpec {
    for k in m.keys() {
        if k != "all" && k != "any" {
            problem(p, format!("match.{k}"), "unknown field");
        }
    }
    let list = |key: &str, p: &mut Vec<FieldProblem>| -> Vec<Predicate> {
        match m.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() <= 50 => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| parse_predicate(item, &format!("match.{key}[{i}]"), p))
                .collect(),
            Some(_) => {
                problem(
                    p,
                    format!("match.{key}"),
                    "must be an array of at most 50 predicates",
                );
                Vec::new()
            }
        }
    };
    MatchSpec {
        all: list("all", p),
        any: list("any", p),
    }
}

fn parse_predicate(v: &Value, at: &str, p: &mut Vec<FieldProblem>) -> Option<Predicate> {
    let Value::Object(o) = v else {
        problem(p, at, "must be an object {field, op, value}");
        return None;
    };
    for k in o.keys() {
        if !matches!(k.as_str(), "field" | "op" | "value") {
            problem(p, format!("{at}.{k}"), "unknown field");
        }
    }
    let field = match o.get("field") {
        Some(Value::String(s)) => Field::parse(s).or_else(|| {
            problem(p, format!("{at}.field"), format!("unknown field {s:?}"));
            None
        }),
        _ => {
            problem(p, format!("{at}.field"), "is required");
            None
        }
    };
    let op = match o.get("op") {
        Some(Value::String(s)) => Op::parse(s).or_else(|| {
            problem(p, format!("{at}.op"), format!("unknown op {s:?}"));
            None
        }),
        _ => {
            problem(p, format!("{at}.op"), "is required");
            None
        }
    };
    let value = o.get("value").cloned().unwrap_or(Value::Null);
    let (field, op) = (field?, op?);
    let ok = match op {
        Op::In | Op::NotIn => value.as_array().is_some_and(|a| {
            a.iter()
                .all(|x| x.is_string() || x.is_number() || x.is_boolean())
        }),
        Op::Exists => value.is_null() || value.is_boolean(),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => match field {
            Field::CompletedAt => value
                .as_str()
                .is_some_and(|s| DateTime::parse_from_rfc3339(s).is_ok()),
            _ => value.is_number(),
        },
        Op::Eq | Op::Ne | Op::Contains => {
            value.is_string() || value.is_number() || value.is_boolean()
        }
    };
    if !ok {
        let want = match op {
            Op::In | Op::NotIn => "an array of strings, numbers or booleans",
            Op::Exists => "true, false or absent",
            Op::Gt | Op::Gte | Op::Lt | Op::Lte if field == Field::CompletedAt => {
                "an RFC 3339 timestamp"
            }
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => "a number",
            _ => "a string, number or boolean",
        };
        problem(
            p,
            format!("{at}.value"),
            format!("must be {want} for op {op:?}"),
        );
        return None;
    }
    Some(Predicate { field, op, value })
}

fn parse_action(v: &Value, at: &str, p: &mut Vec<FieldProblem>) -> Option<Action> {
    let Value::Object(o) = v else {
        problem(p, at, "must be an object");
        return None;
    };
    for k in o.keys() {
        if !matches!(
            k.as_str(),
            "channel"
                | "template"
                | "subject"
                | "url"
                | "image"
                | "delay"
                | "send_at"
                | "cron"
                | "timezone"
                | "until"
                | "max_occurrences"
        ) {
            problem(p, format!("{at}.{k}"), "unknown field");
        }
    }
    let channel = match o
        .get("channel")
        .and_then(Value::as_str)
        .and_then(Channel::parse)
    {
        Some(c) => c,
        None => {
            problem(
                p,
                format!("{at}.channel"),
                "must be sms, email, whatsapp or webhook",
            );
            return None;
        }
    };
    let text = |key: &str, p: &mut Vec<FieldProblem>| match o.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problem(p, format!("{at}.{key}"), "must be a string");
            None
        }
    };
    let template = text("template", p);
    let subject = text("subject", p);
    let url = text("url", p);
    let image = text("image", p);
    let delay = text("delay", p);
    let send_at = text("send_at", p);
    if let Some(Err(e)) = delay.as_deref().map(crate::schedule::parse_delay) {
        problem(p, format!("{at}.delay"), e);
    }
    if let Some(Err(e)) = send_at.as_deref().map(crate::schedule::parse_send_at) {
        problem(p, format!("{at}.send_at"), e);
    }
    let cron = text("cron", p);
    let timezone = text("timezone", p);
    let until = text("until", p);
    if let Some(Err(e)) = cron.as_deref().map(crate::schedule::parse_cron) {
        problem(p, format!("{at}.cron"), e);
    }
    if let Some(Err(e)) = timezone.as_deref().map(crate::schedule::parse_timezone) {
        problem(p, format!("{at}.timezone"), e);
    }
    if let Some(Err(e)) = until.as_deref().map(crate::schedule::parse_send_at) {
        problem(p, format!("{at}.until"), e);
    }
    let max_occurrences = match o.get("max_occurrences") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_u64()
            .filter(|n| (1..=crate::schedule::MAX_OCCURRENCES as u64).contains(n))
        {
            Some(n) => u16::try_from(n).ok(),
            None => {
                problem(
                    p,
                    format!("{at}.max_occurrences"),
                    format!(
                        "must be a whole number from 1 to {}",
                        crate::schedule::MAX_OCCURRENCES
                    ),
                );
                None
            }
        },
    };
    if let (Some(Ok(c)), true) = (
        cron.as_deref().map(crate::schedule::parse_cron),
        o.get("max_occurrences").is_none_or(Value::is_null),
    ) {
        let tz = timezone
            .as_deref()
            .and_then(|t| crate::schedule::parse_timezone(t).ok())
            .unwrap_or(chrono_tz::UTC);
        if crate::schedule::shortest_interval(&c, tz)
            .is_some_and(|d| d < crate::schedule::MIN_UNCAPPED_INTERVAL)
        {
            problem(
                p,
                format!("{at}.cron"),
                "repeats more often than hourly: set max_occurrences (how many per submission)",
            );
        }
    }
    if cron.is_some() {
        if until.is_none() {
            problem(
                p,
                format!("{at}.until"),
                "is required with cron: when the reminders stop",
            );
        }
        if delay.is_some() || send_at.is_some() {
            problem(
                p,
                format!("{at}.cron"),
                "a recurring action takes no delay or send_at",
            );
        }
    } else {
        let max = max_occurrences.map(|_| String::new());
        for (key, v) in [
            ("timezone", &timezone),
            ("until", &until),
            ("max_occurrences", &max),
        ] {
            if v.is_some() {
                problem(
                    p,
                    format!("{at}.{key}"),
                    "only recurring (cron) actions take it",
                );
            }
        }
    }
    for (key, t) in [
        ("template", &template),
        ("subject", &subject),
        ("image", &image),
    ] {
        if let Some(t) = t {
            if let Err(e) = minijinja::Environment::new().template_from_str(t) {
                problem(
                    p,
                    format!("{at}.{key}"),
                    format!("template does not compile: {e}"),
                );
            }
        }
    }
    match channel {
        Channel::Webhook => match &url {
            Some(u) if is_http_url(u) => {}
            _ => problem(p, format!("{at}.url"), "a webhook needs an http(s) URL"),
        },
        _ => {
            if template.is_none() {
                problem(p, format!("{at}.template"), "is required for this channel");
            }
            if url.is_some() {
                problem(p, format!("{at}.url"), "only webhook actions take a url");
            }
        }
    }
    if subject.is_some() && channel != Channel::Email {
        problem(
            p,
            format!("{at}.subject"),
            "only e-mail actions take a subject",
        );
    }
    if image.is_some() && channel != Channel::Whatsapp {
        problem(
            p,
            format!("{at}.image"),
            "only WhatsApp actions take an image",
        );
    }
    Some(Action {
        channel,
        template,
        subject,
        url,
        image,
        delay,
        send_at,
        cron,
        timezone,
        until,
        max_occurrences,
    })
}

fn is_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or_default();
        !host.is_empty() && !host.contains(char::is_whitespace) && u.len() <= 2048
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_example() -> Value {
        json!({
            "name": "Promo Nov high scorers", "active": true, "quiz_id": "promo-nov",
            "match": {
                "all": [{"field": "score", "op": "gte", "value": 70}, {"field": "answers.q1", "op": "in", "value": ["b", "c"]}],
                "any": [{"field": "tags", "op": "contains", "value": "promo-nov"}, {"field": "respondent.locale", "op": "eq", "value": "pt-BR"}]
            },
            "actions": [
                {"channel": "sms", "template": "Olá {{ respondent.name }}, seu cupom: {{ submission_id[:8] }}"},
                {"channel": "email", "subject": "Seu resultado", "template": "<p>Score {{ score }}</p>"},
                {"channel": "webhook", "url": "https://crm.example.com/hooks/leads"}
            ],
            "priority": "high", "starts_at": null, "ends_at": null
        })
    }

    #[test]
    fn a_channel_may_have_several_actions_with_delays_and_send_at() {
        let mut c = spec_example();
        c["actions"] = json!([
            {"channel": "sms", "template": "Welcome"},
            {"channel": "sms", "template": "Tomorrow!", "send_at": "{{ metadata.event_at }}", "delay": "-1d"},
            {"channel": "sms", "template": "Later", "delay": "2h"},
            {"channel": "email", "template": "x", "send_at": "2027-01-01T09:00:00-03:00"}
        ]);
        let spec = parse_campaign(&c).expect("valid");
        assert_eq!(spec.actions.len(), 4);
        assert!(spec.actions[0].schedule().is_none());
        assert!(spec.actions[1]
            .schedule()
            .expect("scheduled")
            .needs_submission());
        let back = serde_json::to_value(&spec).expect("json");
        assert_eq!(parse_campaign(&back).expect("round trip"), spec);

        c["actions"] = json!([
            {"channel": "sms", "template": "x", "delay": "soon"},
            {"channel": "sms", "template": "x", "send_at": "next tuesday"},
            {"channel": "sms", "template": "x", "send_at": 5}
        ]);
        let err = parse_campaign(&c).expect_err("invalid");
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "actions[0].delay",
                "actions[1].send_at",
                "actions[2].send_at"
            ]
        );

        // Recurring: a pattern, a zone, an end; nothing else scheduling it.
        c["actions"] = json!([
            {"channel": "sms", "template": "digest", "cron": "0 9 * * *",
             "timezone": "America/Sao_Paulo", "until": "{{ metadata.event_at }}"}
        ]);
        let spec = parse_campaign(&c).expect("valid");
        assert!(spec.actions[0].recurrence().is_some());
        let back = serde_json::to_value(&spec).expect("json");
        assert_eq!(parse_campaign(&back).expect("round trip"), spec);
        c["actions"] = json!([
            {"channel": "sms", "template": "x", "cron": "every morning", "until": "2027-01-01T00:00:00Z"},
            {"channel": "sms", "template": "x", "cron": "0 9 * * *"},
            {"channel": "sms", "template": "x", "cron": "0 9 * * *", "until": "2027-01-01T00:00:00Z", "timezone": "Mars/Base"},
            {"channel": "sms", "template": "x", "cron": "0 9 * * *", "until": "2027-01-01T00:00:00Z", "delay": "1h"},
            {"channel": "sms", "template": "x", "timezone": "UTC"},
            {"channel": "sms", "template": "x", "cron": "*/5 * * * *", "until": "2027-01-01T00:00:00Z"},
            {"channel": "sms", "template": "x", "cron": "*/5 * * * *", "until": "2027-01-01T00:00:00Z", "max_occurrences": 0},
            {"channel": "sms", "template": "x", "max_occurrences": 3}
        ]);
        let err = parse_campaign(&c).expect_err("invalid");
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "actions[0].cron",
                "actions[1].until",
                "actions[2].timezone",
                "actions[3].cron",
                "actions[4].timezone",
                "actions[5].cron",
                "actions[6].max_occurrences",
                "actions[7].max_occurrences"
            ]
        );
        // More often than hourly is fine once capped.
        c["actions"] = json!([
            {"channel": "sms", "template": "x", "cron": "*/5 * * * *", "until": "2027-01-01T00:00:00Z", "max_occurrences": 6}
        ]);
        let spec = parse_campaign(&c).expect("capped");
        assert_eq!(spec.actions[0].max_occurrences, Some(6));
    }

    #[test]
    fn the_spec_example_parses_and_round_trips() {
        let spec = parse_campaign(&spec_example()).expect("valid");
        assert_eq!(spec.match_.all.len(), 2);
        assert_eq!(spec.match_.all[1].field, Field::Answer("q1".into()));
        assert_eq!(spec.priority, Priority::High);
        let back = serde_json::to_value(&spec).expect("json");
        assert_eq!(parse_campaign(&back).expect("round trip"), spec);
    }

    #[test]
    fn u0000_anywhere_in_a_campaign_is_refused_with_its_path() {
        let mut c = spec_example();
        c["actions"][1]["template"] = json!("a\u{0}b");
        c["match"]["all"][0]["value"] = json!(["x\u{0}"]);
        let e = parse_campaign(&c).expect_err("refused");
        let fields: Vec<&str> = e.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["actions[1].template", "match.all[0].value[0]"]);
    }

    #[test]
    fn bad_campaigns_name_every_problem() {
        let body = json!({
            "name": "", "colour": 1,
            "match": {"all": [{"field": "shoe_size", "op": "eq", "value": 1}, {"field": "score", "op": "like", "value": 1}]},
            "actions": [{"channel": "sms", "template": "{{ oops"}, {"channel": "webhook", "url": "ftp://x"}, {"channel": "fax"}]
        });
        let err = parse_campaign(&body).expect_err("invalid");
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "name",
            "colour",
            "match.all[0].field",
            "match.all[1].op",
            "actions[0].template",
            "actions[1].url",
            "actions[2].channel",
        ] {
            assert!(fields.contains(&want), "{want} in {fields:?}");
        }
    }
}

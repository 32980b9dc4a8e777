//! Campaign bodies validated into a [`CampaignSpec`]: every problem reported with its path
//! (`actions[1].template`), never only the first.

use super::{Action, CampaignSpec, Field, MatchSpec, Op, Predicate};
use crate::{Channel, FieldProblem, Priority, QuizId, ValidationErrors};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

const CAMPAIGN_KEYS: &[&str] = &[
    "name",
    "active",
    "quiz_id",
    "match",
    "actions",
    "priority",
    "starts_at",
    "ends_at",
    "purpose",
    "send_window",
    "frequency_cap",
];

pub(super) fn problem(
    p: &mut Vec<FieldProblem>,
    field: impl Into<String>,
    problem: impl Into<String>,
) {
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
    let spec = CampaignSpec {
        name: name(obj, &mut p),
        active: active(obj, &mut p),
        quiz_id: quiz_id(obj, &mut p),
        match_: match obj.get("match") {
            None | Some(Value::Null) => MatchSpec::default(),
            Some(Value::Object(m)) => parse_match(m, &mut p),
            Some(_) => {
                problem(&mut p, "match", "must be an object with `all` and `any`");
                MatchSpec::default()
            }
        },
        actions: actions(obj, &mut p),
        priority: priority(obj, &mut p),
        starts_at: time(obj, "starts_at", &mut p),
        ends_at: time(obj, "ends_at", &mut p),
        purpose: purpose(obj, &mut p),
        send_window: send_window(obj, &mut p),
        frequency_cap: frequency_cap(obj, &mut p),
    };
    if let (Some(s), Some(e)) = (spec.starts_at, spec.ends_at) {
        if e <= s {
            problem(&mut p, "ends_at", "must be after starts_at");
        }
    }
    if p.is_empty() {
        Ok(spec)
    } else {
        Err(ValidationErrors(p))
    }
}

fn purpose(obj: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> crate::consent::Purpose {
    match obj.get("purpose") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
            problem(p, "purpose", "must be marketing or transactional");
            Default::default()
        }),
    }
}

fn send_window(
    obj: &Map<String, Value>,
    p: &mut Vec<FieldProblem>,
) -> Option<crate::consent::SendWindow> {
    let v = obj.get("send_window").filter(|v| !v.is_null())?;
    let parsed = serde_json::from_value::<crate::consent::SendWindow>(v.clone())
        .map_err(|e| e.to_string())
        .and_then(|w| w.parse().map(|_| w));
    parsed
        .map_err(|e| {
            problem(
                p,
                "send_window",
                format!("must be {{\"from\": \"HH:MM\", \"to\": \"HH:MM\", \"timezone\": IANA name}}: {e}"),
            )
        })
        .ok()
}

fn frequency_cap(
    obj: &Map<String, Value>,
    p: &mut Vec<FieldProblem>,
) -> Option<crate::consent::FrequencyCap> {
    match obj.get("frequency_cap") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => s.parse().map_err(|e| problem(p, "frequency_cap", e)).ok(),
        Some(_) => {
            problem(p, "frequency_cap", "must be a string such as \"3/24h\"");
            None
        }
    }
}

fn name(obj: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> String {
    match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => s.clone(),
        _ => {
            problem(p, "name", "is required: 1 to 200 characters");
            String::new()
        }
    }
}

fn active(obj: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> bool {
    match obj.get("active") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problem(p, "active", "must be a boolean");
            true
        }
    }
}

fn quiz_id(obj: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> Option<QuizId> {
    match obj.get("quiz_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => QuizId::parse(s)
            .map_err(|e| problem(p, "quiz_id", e.to_string()))
            .ok(),
        Some(_) => {
            problem(p, "quiz_id", "must be a string or null");
            None
        }
    }
}

fn actions(obj: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> Vec<Action> {
    match obj.get("actions") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= 20 => items
            .iter()
            .enumerate()
            .filter_map(|(i, a)| parse_action(a, &format!("actions[{i}]"), p))
            .collect(),
        _ => {
            problem(p, "actions", "is required: 1 to 20 actions");
            Vec::new()
        }
    }
}

fn priority(obj: &Map<String, Value>, p: &mut Vec<FieldProblem>) -> Priority {
    let parsed = match obj.get("priority") {
        None | Some(Value::Null) => return Priority::Normal,
        Some(Value::String(s)) => Priority::parse(s),
        Some(_) => None,
    };
    parsed.unwrap_or_else(|| {
        problem(p, "priority", "must be high, normal or low");
        Priority::Normal
    })
}

fn time(obj: &Map<String, Value>, key: &str, p: &mut Vec<FieldProblem>) -> Option<DateTime<Utc>> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| problem(p, key, "must be an RFC 3339 timestamp or null"))
            .ok(),
        Some(_) => {
            problem(p, key, "must be an RFC 3339 timestamp or null");
            None
        }
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

const ACTION_KEYS: &[&str] = &[
    "channel",
    "template",
    "subject",
    "url",
    "image",
    "delay",
    "send_at",
    "cron",
    "timezone",
    "until",
    "max_occurrences",
    "whatsapp_template",
    "from",
    "cancel_key",
    "strict",
    "fallback",
];

pub(super) fn parse_action(v: &Value, at: &str, p: &mut Vec<FieldProblem>) -> Option<Action> {
    let Value::Object(o) = v else {
        problem(p, at, "must be an object");
        return None;
    };
    for k in o.keys() {
        if !ACTION_KEYS.contains(&k.as_str()) {
            problem(p, format!("{at}.{k}"), "unknown field");
        }
    }
    let channel = o
        .get("channel")
        .and_then(Value::as_str)
        .and_then(Channel::parse);
    let Some(channel) = channel else {
        let why = "must be sms, email, whatsapp or webhook";
        problem(p, format!("{at}.channel"), why);
        return None;
    };
    let text = |key: &str, p: &mut Vec<FieldProblem>| match o.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problem(p, format!("{at}.{key}"), "must be a string");
            None
        }
    };
    let action = Action {
        channel,
        template: text("template", p),
        subject: text("subject", p),
        url: text("url", p),
        image: text("image", p),
        delay: text("delay", p),
        send_at: text("send_at", p),
        cron: text("cron", p),
        timezone: text("timezone", p),
        until: text("until", p),
        max_occurrences: max_occurrences(o.get("max_occurrences"), at, p),
        whatsapp_template: super::whatsapp::parse(o.get("whatsapp_template"), at, p),
        from: text("from", p),
        cancel_key: text("cancel_key", p),
        strict: match o.get("strict") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                problem(p, format!("{at}.strict"), "must be true or false");
                false
            }
        },
        fallback: super::fallback::parse(o.get("fallback"), at, p),
    };
    check_times(&action, at, p);
    super::fallback::check(&action, at, p);
    check_recurrence(
        &action,
        o.get("max_occurrences").is_none_or(Value::is_null),
        at,
        p,
    );
    check_content(&action, at, p);
    Some(action)
}

fn max_occurrences(v: Option<&Value>, at: &str, p: &mut Vec<FieldProblem>) -> Option<u16> {
    use crate::schedule::MAX_OCCURRENCES;
    let v = v.filter(|v| !v.is_null())?;
    match v
        .as_u64()
        .filter(|n| (1..=MAX_OCCURRENCES as u64).contains(n))
    {
        Some(n) => u16::try_from(n).ok(),
        None => {
            let why = format!("must be a whole number from 1 to {MAX_OCCURRENCES}");
            problem(p, format!("{at}.max_occurrences"), why);
            None
        }
    }
}

/// Each time field parses on its own.
fn check_times(a: &Action, at: &str, p: &mut Vec<FieldProblem>) {
    use crate::schedule::{parse_cron, parse_delay, parse_send_at, parse_timezone};
    if let Some(Err(e)) = a.delay.as_deref().map(parse_delay) {
        problem(p, format!("{at}.delay"), e);
    }
    if let Some(Err(e)) = a.send_at.as_deref().map(parse_send_at) {
        problem(p, format!("{at}.send_at"), e);
    }
    if let Some(Err(e)) = a.cron.as_deref().map(parse_cron) {
        problem(p, format!("{at}.cron"), e);
    }
    if let Some(Err(e)) = a.timezone.as_deref().map(parse_timezone) {
        problem(p, format!("{at}.timezone"), e);
    }
    if let Some(Err(e)) = a.until.as_deref().map(parse_send_at) {
        problem(p, format!("{at}.until"), e);
    }
}

/// A recurring (cron) action has an end and no one-off time, and one that repeats more often
/// than hourly is capped; a one-off action takes none of the recurring fields.
fn check_recurrence(a: &Action, uncapped: bool, at: &str, p: &mut Vec<FieldProblem>) {
    use crate::schedule::{parse_cron, parse_timezone, shortest_interval, MIN_UNCAPPED_INTERVAL};
    if let (Some(Ok(c)), true) = (a.cron.as_deref().map(parse_cron), uncapped) {
        let tz = a
            .timezone
            .as_deref()
            .and_then(|t| parse_timezone(t).ok())
            .unwrap_or(chrono_tz::UTC);
        if shortest_interval(&c, tz).is_some_and(|d| d < MIN_UNCAPPED_INTERVAL) {
            let why =
                "repeats more often than hourly: set max_occurrences (how many per submission)";
            problem(p, format!("{at}.cron"), why);
        }
    }
    if a.cron.is_some() {
        if a.until.is_none() {
            let why = "is required with cron: when the reminders stop";
            problem(p, format!("{at}.until"), why);
        }
        if a.delay.is_some() || a.send_at.is_some() {
            let why = "a recurring action takes no delay or send_at";
            problem(p, format!("{at}.cron"), why);
        }
        return;
    }
    let max = a.max_occurrences.map(|_| String::new());
    for (key, v) in [
        ("timezone", &a.timezone),
        ("until", &a.until),
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

/// Templates compile, and each channel gets the fields it takes.
fn check_content(a: &Action, at: &str, p: &mut Vec<FieldProblem>) {
    for (key, t) in [
        ("template", &a.template),
        ("subject", &a.subject),
        ("image", &a.image),
        ("cancel_key", &a.cancel_key),
    ] {
        if let Some(Err(e)) = t.as_deref().map(crate::template::check) {
            problem(
                p,
                format!("{at}.{key}"),
                format!("template does not compile: {e}"),
            );
        }
    }
    match a.channel {
        Channel::Webhook => match &a.url {
            Some(u) if is_http_url(u) => {}
            _ => problem(p, format!("{at}.url"), "a webhook needs an http(s) URL"),
        },
        _ => {
            if a.template.is_none() && a.whatsapp_template.is_none() {
                problem(p, format!("{at}.template"), "is required for this channel");
            }
            if a.url.is_some() {
                problem(p, format!("{at}.url"), "only webhook actions take a url");
            }
        }
    }
    if a.subject.is_some() && a.channel != Channel::Email {
        problem(
            p,
            format!("{at}.subject"),
            "only e-mail actions take a subject",
        );
    }
    if a.whatsapp_template.is_some() && a.channel != Channel::Whatsapp {
        let why = "only WhatsApp actions take a WhatsApp template";
        problem(p, format!("{at}.whatsapp_template"), why);
    }
    if a.whatsapp_template.is_some() && (a.template.is_some() || a.image.is_some()) {
        let why = "a WhatsApp template message takes no free text or image (the template has them)";
        problem(p, format!("{at}.whatsapp_template"), why);
    }
    if a.from
        .as_deref()
        .is_some_and(|f| f.trim().is_empty() || f.len() > 320)
    {
        problem(
            p,
            format!("{at}.from"),
            "must name one of the channel's senders",
        );
    }
    if a.from.is_some() && a.channel == Channel::Webhook {
        problem(p, format!("{at}.from"), "webhook actions have no sender");
    }
    if a.image.is_some() && a.channel != Channel::Whatsapp {
        problem(
            p,
            format!("{at}.image"),
            "only WhatsApp actions take an image",
        );
    }
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

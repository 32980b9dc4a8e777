//! Validation of submission bodies (contract §2.1), collecting every problem with its field path.
//!
//! Validation walks the parsed JSON value rather than relying on serde errors, so that a
//! client gets all of its mistakes at once (`respondent.phone`, `answers[3].value`, ...)
//! instead of the first one serde happens to meet.

use crate::submission::{Answer, AnswerValue, Respondent, Submission};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

pub const MAX_ANSWERS: usize = 200;
pub const MAX_TAGS: usize = 20;
const MAX_QUESTION_CHARS: usize = 64;
const MAX_TEXT_VALUE_CHARS: usize = 1024;
const MAX_LIST_VALUE_ITEMS: usize = 50;
const MAX_NAME_CHARS: usize = 200;
const MAX_TAG_CHARS: usize = 64;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

/// Every problem found in a body; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid field(s), first: {}: {}", .0.len(), .0[0].field, .0[0].problem)]
pub struct ValidationErrors(pub Vec<FieldProblem>);

#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldProblem {
            field: field.into(),
            problem: problem.into(),
        });
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Validates one submission body (the object of contract §2.1, without batch-only keys).
/// `prefix` is prepended to field paths (empty for a top-level body).
pub fn parse_submission(body: &Value) -> Result<Submission, ValidationErrors> {
    let mut p = Problems::default();
    let Some(obj) = body.as_object() else {
        return Err(ValidationErrors(vec![FieldProblem {
            field: String::new(),
            problem: format!("the body must be a JSON object, not {}", type_name(body)),
        }]));
    };
    let mut out = Submission::default();
    // PostgreSQL stores U+0000 neither in `text` nor in `jsonb`: one such character anywhere
    // would make the lead unstorable, so it is refused here, with its path.
    if has_nul(body) {
        find_nul(body, "", &mut p);
    }
    for (key, value) in obj {
        match key.as_str() {
            "respondent" => out.respondent = respondent(value, &mut p),
            "answers" => out.answers = answers(value, &mut p),
            "score" => out.score = score(value, &mut p),
            "completed_at" => out.completed_at = completed_at(value, &mut p),
            "tags" => out.tags = tags(value, &mut p),
            "metadata" => match value {
                Value::Object(m) if depth(value) > MAX_METADATA_DEPTH => p.add(
                    "metadata",
                    format!("nested deeper than {MAX_METADATA_DEPTH} levels"),
                ),
                Value::Object(m) => out.metadata = m.clone(),
                Value::Null => {}
                other => p.add(
                    "metadata",
                    format!("must be an object, not {}", type_name(other)),
                ),
            },
            other => p.add(other, "unknown field"),
        }
    }
    if p.0.is_empty() {
        Ok(out)
    } else {
        Err(ValidationErrors(p.0))
    }
}

/// How deep `metadata` may nest (the object itself is level 1).
pub const MAX_METADATA_DEPTH: usize = 16;

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Every string and key of `v` holding U+0000, by path: PostgreSQL can store such a value
/// neither in `text` nor in `jsonb`, so any body bound for it is refused with these.
pub(crate) fn nul_problems(v: &Value) -> Vec<FieldProblem> {
    let mut p = Problems(Vec::new());
    if has_nul(v) {
        find_nul(v, "", &mut p);
    }
    p.0
}

/// Whether any string or key of `v` holds U+0000: the common answer (no) without building a
/// path for every field.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, item)| k.contains('\0') || has_nul(item)),
        _ => false,
    }
}

/// Reports every string and key holding U+0000, by path (`answers[2].value`, `metadata.a`).
fn find_nul(v: &Value, at: &str, p: &mut Problems) {
    const PROBLEM: &str = "must not contain the character U+0000";
    match v {
        Value::String(s) if s.contains('\0') => p.add(at, PROBLEM),
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                find_nul(item, &format!("{at}[{i}]"), p);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                let here = path(at, k);
                if k.contains('\0') {
                    p.add(here.replace('\0', "\\u0000"), format!("key {PROBLEM}"));
                } else {
                    find_nul(item, &here, p);
                }
            }
        }
        _ => {}
    }
}

fn optional_string<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
    p: &mut Problems,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            p.add(field, format!("must be a string, not {}", type_name(other)));
            None
        }
    }
}

fn respondent(value: &Value, p: &mut Problems) -> Respondent {
    let obj = match value {
        Value::Object(o) => o,
        Value::Null => return Respondent::default(),
        other => {
            p.add(
                "respondent",
                format!("must be an object, not {}", type_name(other)),
            );
            return Respondent::default();
        }
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "phone" | "email" | "name" | "locale" | "timezone"
        ) {
            p.add(path("respondent", key), "unknown field");
        }
    }
    let mut r = Respondent::default();
    if let Some(phone) = optional_string(obj, "phone", "respondent.phone", p) {
        if is_e164(phone) {
            r.phone = Some(phone.to_owned());
        } else {
            p.add(
                "respondent.phone",
                "must be an E.164 number such as +5511987654321",
            );
        }
    }
    if let Some(email) = optional_string(obj, "email", "respondent.email", p) {
        if is_email(email) {
            r.email = Some(email.to_owned());
        } else {
            p.add("respondent.email", "must be a valid e-mail address");
        }
    }
    if let Some(name) = optional_string(obj, "name", "respondent.name", p) {
        if name.chars().count() <= MAX_NAME_CHARS {
            r.name = Some(name.to_owned());
        } else {
            p.add(
                "respondent.name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            );
        }
    }
    if let Some(locale) = optional_string(obj, "locale", "respondent.locale", p) {
        if is_bcp47(locale) {
            r.locale = Some(locale.to_owned());
        } else {
            p.add(
                "respondent.locale",
                "must be a BCP-47 language tag such as pt-BR",
            );
        }
    }
    if let Some(tz) = optional_string(obj, "timezone", "respondent.timezone", p) {
        if tz.len() <= 64 && tz.parse::<chrono_tz::Tz>().is_ok() {
            r.timezone = Some(tz.to_owned());
        } else {
            p.add(
                "respondent.timezone",
                "must be an IANA time zone name such as America/Sao_Paulo",
            );
        }
    }
    r
}

/// `^\+[1-9][0-9]{6,14}$`
/// An e-mail address as intake accepts it.
pub fn is_email(s: &str) -> bool {
    s.len() <= 254 && email_address::EmailAddress::is_valid(s) && s.contains('@')
}

/// A phone number in E.164 (`+` and 7 to 15 digits), as intake accepts it.
pub fn is_e164(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 8
        && b.len() <= 16
        && b[0] == b'+'
        && (b'1'..=b'9').contains(&b[1])
        && b[2..].iter().all(u8::is_ascii_digit)
}

/// A well-formed BCP-47 tag: a 2–3 letter (or 4–8 letter registered) language subtag followed
/// by alphanumeric subtags of 1–8 characters, e.g. `pt-BR`, `zh-Hant-TW`, `es-419`.
fn is_bcp47(s: &str) -> bool {
    if s.len() > 35 {
        return false;
    }
    let mut parts = s.split('-');
    let Some(lang) = parts.next() else {
        return false;
    };
    let lang_ok = (2..=8).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_alphabetic())
        && lang.len() != 4;
    lang_ok
        && parts.all(|t| (1..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn answers(value: &Value, p: &mut Problems) -> Vec<Answer> {
    let items = match value {
        Value::Array(a) => a,
        Value::Null => return Vec::new(),
        other => {
            p.add(
                "answers",
                format!("must be an array, not {}", type_name(other)),
            );
            return Vec::new();
        }
    };
    if items.len() > MAX_ANSWERS {
        p.add(
            "answers",
            format!("at most {MAX_ANSWERS} answers, got {}", items.len()),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        // Paths are built only for a problem: the valid body (the usual one) allocates none.
        let at = || format!("answers[{i}]");
        let Value::Object(obj) = item else {
            p.add(at(), format!("must be an object, not {}", type_name(item)));
            continue;
        };
        for key in obj.keys() {
            if key != "question" && key != "value" {
                p.add(path(&at(), key), "unknown field");
            }
        }
        let question = match obj.get("question") {
            Some(Value::String(q)) if !q.is_empty() && q.chars().count() <= MAX_QUESTION_CHARS => {
                Some(q.clone())
            }
            Some(Value::String(_)) => {
                p.add(
                    path(&at(), "question"),
                    format!("must be 1 to {MAX_QUESTION_CHARS} characters"),
                );
                None
            }
            None => {
                p.add(path(&at(), "question"), "is required");
                None
            }
            Some(other) => {
                p.add(
                    path(&at(), "question"),
                    format!("must be a string, not {}", type_name(other)),
                );
                None
            }
        };
        let value = answer_value(obj.get("value"), &|| path(&at(), "value"), p);
        if let (Some(question), Some(value)) = (question, value) {
            out.push(Answer { question, value });
        }
    }
    out
}

fn answer_value(
    value: Option<&Value>,
    at: &dyn Fn() -> String,
    p: &mut Problems,
) -> Option<AnswerValue> {
    match value {
        None => {
            p.add(at(), "is required");
            None
        }
        Some(Value::Bool(b)) => Some(AnswerValue::Bool(*b)),
        Some(Value::Number(n)) => Some(AnswerValue::Number(n.clone())),
        Some(Value::String(s)) if s.chars().count() <= MAX_TEXT_VALUE_CHARS => {
            Some(AnswerValue::Text(s.clone()))
        }
        Some(Value::String(_)) => {
            p.add(
                at(),
                format!("a text answer must be at most {MAX_TEXT_VALUE_CHARS} characters"),
            );
            None
        }
        Some(Value::Array(items)) => {
            if items.len() > MAX_LIST_VALUE_ITEMS {
                p.add(
                    at(),
                    format!("a list answer holds at most {MAX_LIST_VALUE_ITEMS} strings"),
                );
                return None;
            }
            let mut list = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if s.chars().count() <= MAX_TEXT_VALUE_CHARS => {
                        list.push(s.clone())
                    }
                    Value::String(_) => p.add(
                        format!("{}[{i}]", at()),
                        format!("must be at most {MAX_TEXT_VALUE_CHARS} characters"),
                    ),
                    other => p.add(
                        format!("{}[{i}]", at()),
                        format!("must be a string, not {}", type_name(other)),
                    ),
                }
            }
            (list.len() == items.len()).then_some(AnswerValue::List(list))
        }
        Some(other) => {
            p.add(
                at(),
                format!(
                    "must be a string, number, boolean or array of strings, not {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}

fn score(value: &Value, p: &mut Problems) -> Option<f64> {
    match value {
        Value::Null => None,
        // serde_json never produces NaN or infinities from text, but an integer too large for
        // f64 would become infinite: check anyway.
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                p.add("score", "must be a finite number");
                None
            }
        },
        other => {
            p.add(
                "score",
                format!("must be a number, not {}", type_name(other)),
            );
            None
        }
    }
}

fn completed_at(value: &Value, p: &mut Problems) -> Option<DateTime<Utc>> {
    match value {
        Value::Null => None,
        Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                p.add(
                    "completed_at",
                    "must be an RFC 3339 timestamp such as 2026-11-22T10:00:00Z",
                );
                None
            }
        },
        other => {
            p.add(
                "completed_at",
                format!("must be an RFC 3339 string, not {}", type_name(other)),
            );
            None
        }
    }
}

fn tags(value: &Value, p: &mut Problems) -> Vec<String> {
    let items = match value {
        Value::Array(a) => a,
        Value::Null => return Vec::new(),
        other => {
            p.add(
                "tags",
                format!("must be an array of strings, not {}", type_name(other)),
            );
            return Vec::new();
        }
    };
    if items.len() > MAX_TAGS {
        p.add(
            "tags",
            format!("at most {MAX_TAGS} tags, got {}", items.len()),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_TAG_CHARS => {
                out.push(s.clone())
            }
            Value::String(_) => p.add(
                format!("tags[{i}]"),
                format!("must be 1 to {MAX_TAG_CHARS} characters"),
            ),
            other => p.add(
                format!("tags[{i}]"),
                format!("must be a string, not {}", type_name(other)),
            ),
        }
    }
    out
}

/// The canonical form of a JSON value: object keys sorted, no insignificant whitespace.
/// Used to derive submission ids from bodies without an idempotency key.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar Value into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        match parse_submission(&body) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn the_spec_example_is_valid() {
        let body = json!({
            "respondent": {"phone": "+5511987654321", "email": "ana@example.com", "name": "Ana", "locale": "pt-BR"},
            "answers": [{"question": "q1", "value": "b"}, {"question": "age", "value": 31}],
            "score": 72, "completed_at": "2026-11-22T10:00:00Z",
            "tags": ["promo-nov"], "metadata": {"utm_source": "tv", "anything": {"goes": [1]}}
        });
        let s = parse_submission(&body).expect("valid");
        assert_eq!(s.respondent.locale.as_deref(), Some("pt-BR"));
        assert_eq!(s.answers.len(), 2);
        assert_eq!(s.score, Some(72.0));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let f = fields(json!({
            "respondant": {}, "respondent": {"phone": "123", "email": "nope", "x": 1},
            "answers": [{"question": "", "value": {"a": 1}}], "score": "high",
            "tags": [1], "completed_at": "yesterday"
        }));
        for want in [
            "respondant",
            "respondent.phone",
            "respondent.email",
            "respondent.x",
            "answers[0].question",
            "answers[0].value",
            "score",
            "tags[0]",
            "completed_at",
        ] {
            assert!(f.contains(&want.to_owned()), "{want} missing from {f:?}");
        }
    }

    #[test]
    fn nul_anywhere_is_refused_with_its_path() {
        let body = json!({"respondent": {"name": "A\0na"}, "answers": [{"question": "q1", "value": "b\0"}],
            "tags": ["ok", "t\0"], "metadata": {"deep": {"k": ["x\0"]}, "k\0": 1}});
        let mut f = fields(body);
        f.sort();
        for want in [
            "respondent.name",
            "answers[0].value",
            "tags[1]",
            "metadata.deep.k[0]",
            "metadata.k\\u0000",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} in {f:?}");
        }
    }

    #[test]
    fn metadata_nested_deeper_than_16_is_refused() {
        let mut deep = json!("leaf");
        for _ in 0..16 {
            deep = json!({"a": deep});
        }
        assert!(
            parse_submission(&json!({"metadata": deep.clone()})).is_ok(),
            "16 levels pass"
        );
        let deeper = json!({"metadata": {"a": deep}});
        assert_eq!(fields(deeper), vec!["metadata"]);
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(fields(json!({"tags": vec!["t"; 21]})), ["tags"]);
        assert_eq!(
            fields(json!({"answers": vec![json!({"question": "q", "value": 1}); 201]})),
            ["answers"]
        );
        assert_eq!(
            fields(json!({"answers": [{"question": "q", "value": vec!["s"; 51]}]})),
            ["answers[0].value"]
        );
        assert_eq!(
            fields(json!({"respondent": {"name": "n".repeat(201)}})),
            ["respondent.name"]
        );
        assert!(fields(json!({"tags": vec!["t"; 20]})).is_empty());
    }

    #[test]
    fn phone_and_locale_formats() {
        assert!(is_e164("+5511987654321"));
        assert!(is_e164("+1234567"));
        for bad in [
            "5511987654321",
            "+0511987654321",
            "+123456",
            "+1234567890123456",
            "+55 11 98765",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
        for good in ["en", "pt-BR", "zh-Hant-TW", "es-419"] {
            assert!(is_bcp47(good), "{good}");
        }
        for bad in ["", "e", "pt_BR", "pt-", "123"] {
            assert!(!is_bcp47(bad), "{bad}");
        }
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).expect("json");
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&b),
            br#"{"a":{"x":"s","y":[1,2]},"b":1}"#.to_vec()
        );
    }
}

//! A WhatsApp action's approved template (`whatsapp_template`): parsed and checked with the
//! rest of its campaign (contract §3.3).

use super::parse::problem;
use crate::FieldProblem;
use serde_json::Value;

/// A WhatsApp template: a name and language as Meta approved them, parameters that compile.
pub(super) fn parse(
    v: Option<&Value>,
    at: &str,
    p: &mut Vec<FieldProblem>,
) -> Option<crate::WhatsappTemplate> {
    let v = v.filter(|v| !v.is_null())?;
    let at = format!("{at}.whatsapp_template");
    let Value::Object(o) = v else {
        problem(
            p,
            at,
            "must be an object with name, language, body and header_image",
        );
        return None;
    };
    for k in o.keys() {
        if !["name", "language", "body", "header_image"].contains(&k.as_str()) {
            problem(p, format!("{at}.{k}"), "unknown field");
        }
    }
    let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
    let language = o
        .get("language")
        .and_then(Value::as_str)
        .unwrap_or_default();
    check_name_and_language(name, language, &at, p);
    let body = parameters(o.get("body"), &at, p);
    let header_image = match o.get("header_image") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => {
            if let Err(e) = crate::template::check(t) {
                let why = format!("template does not compile: {e}");
                problem(p, format!("{at}.header_image"), why);
            }
            Some(t.clone())
        }
        Some(_) => {
            problem(p, format!("{at}.header_image"), "must be a string");
            None
        }
    };
    Some(crate::WhatsappTemplate {
        name: name.to_owned(),
        language: language.to_owned(),
        body,
        header_image,
    })
}

/// The approved template's name (`[a-z0-9_]`, up to 512) and a Meta language code (`pt_BR`).
fn check_name_and_language(name: &str, language: &str, at: &str, p: &mut Vec<FieldProblem>) {
    if name.is_empty()
        || name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        let why = "must be the approved template's name (lower-case letters, digits and _)";
        problem(p, format!("{at}.name"), why);
    }
    // `pt_BR`, `en`, `en_US`: what Meta's language codes look like.
    let code = |p: Option<&str>| {
        p.is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()))
    };
    let mut parts = language.split('_');
    let lang_ok =
        code(parts.next()) && parts.next().is_none_or(|p| code(Some(p))) && parts.next().is_none();
    if !lang_ok {
        problem(
            p,
            format!("{at}.language"),
            "must be a language code such as pt_BR or en",
        );
    }
}

/// The body's parameters: up to 100 templates that compile.
fn parameters(v: Option<&Value>, at: &str, p: &mut Vec<FieldProblem>) -> Vec<String> {
    let mut body = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.len() <= 100 => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(t) => {
                        if let Err(e) = crate::template::check(t) {
                            let why = format!("template does not compile: {e}");
                            problem(p, format!("{at}.body[{i}]"), why);
                        }
                        body.push(t.to_owned());
                    }
                    None => problem(p, format!("{at}.body[{i}]"), "must be a string"),
                }
            }
        }
        Some(_) => problem(
            p,
            format!("{at}.body"),
            "must be a list of up to 100 templates",
        ),
    }
    body
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn problems(action: serde_json::Value) -> Vec<String> {
        match crate::parse_campaign(&json!({"name": "n", "match": {}, "actions": [action]})) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn templates_need_an_approved_name_a_language_and_parameters_that_compile() {
        let ok = json!({"channel": "whatsapp", "whatsapp_template": {"name": "event_reminder",
            "language": "pt_BR", "body": ["{{ respondent.name }}"], "header_image": "{{ qr_url(submission_id) }}"}});
        assert_eq!(problems(ok), Vec::<String>::new());
        let bad = json!({"channel": "whatsapp", "template": "hi", "whatsapp_template": {"name": "Event Reminder",
            "language": "portuguese", "body": ["{{ x"], "extra": 1}});
        let got = problems(bad);
        for field in [
            "actions[0].whatsapp_template.name",
            "actions[0].whatsapp_template.language",
            "actions[0].whatsapp_template.body[0]",
            "actions[0].whatsapp_template.extra",
            "actions[0].whatsapp_template",
        ] {
            assert!(got.iter().any(|f| f == field), "{field} in {got:?}");
        }
        let sms = json!({"channel": "sms", "template": "hi", "whatsapp_template": {"name": "a", "language": "en"}});
        assert!(problems(sms).contains(&"actions[0].whatsapp_template".to_owned()));
    }
}

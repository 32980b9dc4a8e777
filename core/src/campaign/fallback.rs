//! Channel fallback (contract §3.3): an action's `fallback` is a second message on another
//! channel, sent once when the first cannot reach the person — the channel says the person is
//! not on it (WhatsApp 131026), or no `delivered` receipt came within `after`. Its ledger row
//! is written when the first message's outcome arms it, as `scheduled`; a `delivered` receipt
//! before it is due cancels it.

use super::parse::{parse_action, problem};
use super::{Action, Fallback, FallbackOn};
use crate::validate::FieldProblem;
use crate::Channel;
use serde_json::Value;

/// The ledger steps of fallback messages start here, above every campaign step (a recurring
/// action's occurrences stay below 13,000), so a fallback row never takes a campaign step's key.
pub const FALLBACK_BASE: u16 = 16_384;

/// The ledger step of the fallback of the `step`-th action of `channel` (the primary's channel
/// is in the step: a campaign's WhatsApp and e-mail actions may both fall back to SMS).
pub fn fallback_step(primary: Channel, step: u16) -> u16 {
    let index = Channel::ALL.iter().position(|c| *c == primary).unwrap_or(0) as u16;
    FALLBACK_BASE + index * crate::schedule::STEP_STRIDE + step % crate::schedule::STEP_STRIDE
}

/// The primary action (channel, step) a fallback step stands for; `None`: not a fallback step.
pub fn primary_of(step: u16) -> Option<(Channel, u16)> {
    let rest = step.checked_sub(FALLBACK_BASE)?;
    let stride = crate::schedule::STEP_STRIDE;
    let channel = *Channel::ALL.get(usize::from(rest / stride))?;
    Some((channel, rest % stride))
}

const KEYS: &[&str] = &["on", "after"];

/// Parses `{"channel", "template", …, "on": [...], "after": "10m"}` under `{at}.fallback`.
pub(super) fn parse(
    v: Option<&Value>,
    at: &str,
    p: &mut Vec<FieldProblem>,
) -> Option<Box<Fallback>> {
    let v = v.filter(|v| !v.is_null())?;
    let at = format!("{at}.fallback");
    let Value::Object(o) = v else {
        problem(p, &at, "must be an object: an action with on and after");
        return None;
    };
    let mut rest = o.clone();
    rest.retain(|k, _| !KEYS.contains(&k.as_str()));
    let on = on(o.get("on"), &at, p);
    let after = match o.get("after") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match crate::schedule::parse_delay(s) {
            Ok(d) if d > chrono::Duration::zero() => Some(s.clone()),
            _ => {
                problem(
                    p,
                    format!("{at}.after"),
                    "must be a positive duration such as \"10m\"",
                );
                None
            }
        },
        Some(_) => {
            problem(
                p,
                format!("{at}.after"),
                "must be a duration such as \"10m\"",
            );
            None
        }
    };
    if on.contains(&FallbackOn::Undelivered) && after.is_none() && !o.contains_key("after") {
        let why = "is required with undelivered: how long to wait for a delivered receipt";
        problem(p, format!("{at}.after"), why);
    }
    let action = parse_action(&Value::Object(rest), &at, p)?;
    for (key, set) in [
        ("delay", action.delay.is_some()),
        ("send_at", action.send_at.is_some()),
        ("cron", action.cron.is_some()),
        ("cancel_key", action.cancel_key.is_some()),
        ("fallback", action.fallback.is_some()),
    ] {
        if set {
            let why = "a fallback is sent when it is armed: it takes no schedule, cancel key or fallback of its own";
            problem(p, format!("{at}.{key}"), why);
        }
    }
    Some(Box::new(Fallback { action, on, after }))
}

fn on(v: Option<&Value>, at: &str, p: &mut Vec<FieldProblem>) -> Vec<FallbackOn> {
    let why = "must be a non-empty array of not_on_channel and undelivered";
    let Some(Value::Array(items)) = v else {
        problem(p, format!("{at}.on"), why);
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some("not_on_channel") => out.push(FallbackOn::NotOnChannel),
            Some("undelivered") => out.push(FallbackOn::Undelivered),
            _ => problem(p, format!("{at}.on[{i}]"), why),
        }
    }
    if items.is_empty() {
        problem(p, format!("{at}.on"), why);
    }
    out.dedup();
    out
}

/// A recurring action takes no fallback (each occurrence would need its own).
pub(super) fn check(a: &Action, at: &str, p: &mut Vec<FieldProblem>) {
    if a.fallback.is_some() && a.cron.is_some() {
        problem(
            p,
            format!("{at}.fallback"),
            "a recurring (cron) action takes no fallback",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_round_trip_and_stay_clear_of_campaign_steps() {
        for c in Channel::ALL {
            for s in [0, 1, 19, 31] {
                let f = fallback_step(c, s);
                assert!(f >= FALLBACK_BASE && f <= i16::MAX as u16);
                assert_eq!(primary_of(f), Some((c, s)));
            }
        }
        assert_eq!(primary_of(12_819), None);
    }

    #[test]
    fn a_fallback_parses_with_paths_for_what_is_wrong() {
        let mut c = json!({"name": "n", "active": true, "match": {}, "actions": [
            {"channel": "whatsapp", "whatsapp_template": {"name": "t", "language": "pt_BR"},
             "fallback": {"channel": "sms", "template": "Oi {{ respondent.name }}",
                          "on": ["not_on_channel", "undelivered"], "after": "10m"}}
        ]});
        let spec = crate::campaign::parse_campaign(&c).expect("valid");
        let f = spec.actions[0].fallback.as_ref().expect("fallback");
        assert_eq!(f.action.channel, Channel::Sms);
        assert_eq!(f.after.as_deref(), Some("10m"));
        let back = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            crate::campaign::parse_campaign(&back).expect("round trip"),
            spec
        );

        c["actions"] = json!([
            {"channel": "whatsapp", "template": "x", "fallback": {"channel": "sms", "template": "x",
             "on": ["undelivered"], "delay": "1h",
             "fallback": {"channel": "email", "template": "y", "on": ["undelivered"], "after": "1h"}}},
            {"channel": "sms", "template": "x",
             "fallback": {"channel": "email", "on": ["soon"], "after": "-1m"}}
        ]);
        let err = crate::campaign::parse_campaign(&c).expect_err("invalid");
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "actions[0].fallback.after",
            "actions[0].fallback.delay",
            "actions[0].fallback.fallback",
            "actions[1].fallback.on[0]",
            "actions[1].fallback.after",
            "actions[1].fallback.template",
        ] {
            assert!(fields.contains(&want), "{want} in {fields:?}");
        }
    }
}

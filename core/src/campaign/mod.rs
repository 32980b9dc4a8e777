//! Campaigns (contract §2.4): what to match and what to send, validated with field paths.

use crate::{Channel, Priority, QuizId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

mod fallback;
mod parse;
mod whatsapp;

pub use fallback::{fallback_step, primary_of, FALLBACK_BASE};
pub use parse::parse_campaign;

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
    Timezone,
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
            "respondent.timezone" => Field::Timezone,
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
            Field::Timezone => "respondent.timezone".into(),
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
    /// WhatsApp Cloud: an approved message template, its parameters rendered per lead (a
    /// business-initiated message outside the 24-hour window must be one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp_template: Option<WhatsappTemplate>,
    /// Pins the sender (a `from` number or address, a WhatsApp phone-number id, an Evolution
    /// instance) among the channel's senders (contract §3.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A template rendering to the key `POST /v1/cancellations` cancels this message by
    /// (`invoice-{{ metadata.invoice_id }}`); rendered at match time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_key: Option<String>,
    /// An undefined variable fails the message instead of rendering as nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Another channel's message, sent once when this one cannot reach the person (see
    /// [`Fallback`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Box<Fallback>>,
}

/// An action's fallback: a message of its own (any channel, no schedule) and when it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    #[serde(flatten)]
    pub action: Action,
    pub on: Vec<FallbackOn>,
    /// How long to wait for a `delivered` receipt (with [`FallbackOn::Undelivered`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// What arms a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackOn {
    /// The channel says the person is not on it (WhatsApp 131026).
    NotOnChannel,
    /// No `delivered` receipt within `after` (or the message failed for good).
    Undelivered,
}

impl Fallback {
    /// How long after the first message was sent the fallback is due, when no receipt came.
    pub fn wait(&self) -> Option<std::time::Duration> {
        let after = self.after.as_deref()?;
        crate::schedule::parse_delay(after).ok()?.to_std().ok()
    }

    pub fn arms_on(&self, on: FallbackOn) -> bool {
        self.on.contains(&on)
    }
}

/// An approved WhatsApp template: its name and language as approved, the body's parameters
/// (`{{1}}`, `{{2}}`, … in order) and an optional header image, each a template over the lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatsappTemplate {
    pub name: String,
    pub language: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_image: Option<String>,
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
    /// Marketing (the default) or transactional (contract §3.2).
    #[serde(default)]
    pub purpose: crate::consent::Purpose,
    /// Quiet hours: messages due outside the window wait for its next opening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_window: Option<crate::consent::SendWindow>,
    /// At most this many of this campaign's messages per recipient and channel per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_cap: Option<crate::consent::FrequencyCap>,
}

impl CampaignSpec {
    /// The action a ledger step sends on `channel`: the step-th action of the channel, or, for
    /// a fallback step, the fallback of the action it stands for.
    pub fn action_for(&self, channel: Channel, step: u16) -> Option<&Action> {
        let nth = |c: Channel, n: u16| {
            self.actions
                .iter()
                .filter(|a| a.channel == c)
                .nth(usize::from(n % crate::schedule::STEP_STRIDE))
        };
        match primary_of(step) {
            None => nth(channel, step),
            Some((c, n)) => nth(c, n)
                .and_then(|a| a.fallback.as_deref())
                .map(|f| &f.action)
                .filter(|a| a.channel == channel),
        }
    }
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

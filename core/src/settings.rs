//! Types of configuration values that every stage's settings section shares: durations
//! written as people write them (`300ms`, `1m30s`, `2h`) and calling codes, parsed when the
//! configuration is loaded, never later.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A duration written `300ms`, `1m30s` or `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        humantime::parse_duration(raw.trim())
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))
    }
}

/// A list of durations, comma-separated (`5s,25s,2m`): a retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durations(pub Vec<Duration>);

impl Durations {
    /// At least one duration; every part must be one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(|p| humantime::parse_duration(p.trim()).ok())
            .collect::<Option<Vec<_>>>()
            .filter(|v| !v.is_empty())
            .map(Durations)
            .ok_or_else(|| format!("invalid schedule {raw:?}: expected e.g. 5s,25s,2m,10m,1h"))
    }
}

impl Serialize for Durations {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        s.serialize_str(&parts.join(","))
    }
}

impl<'de> Deserialize<'de> for Durations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Durations::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Country calling codes (E.164 prefixes: `55`, `1`, `351`), comma-separated: where SMS and
/// WhatsApp may go (`QUIZFLOW_ALLOWED_COUNTRIES`). Empty: everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallingCodes(Vec<String>);

impl CallingCodes {
    /// Each part 1 to 6 digits, with or without a leading `+`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let digits = p.strip_prefix('+').unwrap_or(p);
                (!digits.is_empty()
                    && digits.len() <= 6
                    && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.to_owned())
                .ok_or_else(|| format!("{p:?} is not a calling code: expected e.g. 55,1,351"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(CallingCodes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an E.164 number (`+5511…`) may be messaged: always, when no code is listed.
    pub fn allows(&self, phone: &str) -> bool {
        let digits = phone.trim().trim_start_matches('+');
        self.0.is_empty() || self.0.iter().any(|c| digits.starts_with(c.as_str()))
    }
}

impl Serialize for CallingCodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.join(","))
    }
}

impl<'de> Deserialize<'de> for CallingCodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        CallingCodes::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn calling_codes_allow_their_numbers_only() {
        let c = super::CallingCodes::parse("55, +1").expect("codes");
        assert!(c.allows("+5511987654321"));
        assert!(c.allows("+14155550100"));
        assert!(!c.allows("+447700900123"));
        assert!(super::CallingCodes::default().allows("+447700900123"));
        assert!(super::CallingCodes::parse("55,BR").is_err());
        assert!(super::CallingCodes::parse("1234567").is_err());
        let back: super::CallingCodes =
            serde_json::from_value(serde_json::to_value(&c).expect("ser")).expect("round trip");
        assert_eq!(back, c);
    }

    use super::*;

    #[test]
    fn durations_round_trip_as_people_write_them() {
        let d: HumanDuration = serde_json::from_str("\"1m30s\"").expect("duration");
        assert_eq!(d.0, Duration::from_secs(90));
        assert_eq!(
            serde_json::to_string(&d).ok().as_deref(),
            Some("\"1m 30s\"")
        );
        let l: Durations = serde_json::from_str("\"5s, 25s,2m\"").expect("list");
        assert!(Durations::parse("5s,,2m").is_err());
        assert!(Durations::parse("").is_err());
        assert_eq!(l.0.len(), 3);
        let back: Durations =
            serde_json::from_value(serde_json::to_value(&l).expect("ser")).expect("round trip");
        assert_eq!(back, l);
        assert!(serde_json::from_str::<HumanDuration>("\"soon\"").is_err());
    }
}

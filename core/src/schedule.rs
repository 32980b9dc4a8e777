//! When a campaign action is due: `delay` ("2h", "-1d") and `send_at` (an RFC 3339 time, or a
//! template over the submission rendering to one, e.g. `{{ metadata.event_at }}`).
//!
//! With both, the delay shifts the time `send_at` names (`send_at` the event, `delay: "-1d"`:
//! the day before). With only a delay, it counts from when the submission is matched. A due
//! time already past means now: a late sign-up still gets its reminder.
//!
//! A recurring action (`cron`, in a `timezone`, `until` a time or a template) is sent at every
//! occurrence of the pattern after the submission was received and up to `until` (at most
//! [`MAX_OCCURRENCES`]); occurrences already past when it is matched are skipped (a replay
//! does not send yesterday's digest). Occurrence `k` (from 1) of the action with step `s` is
//! ledger step `s + k * STEP_STRIDE`, so each has its own ledger row and job id, the same in
//! every run.

use chrono::{DateTime, Duration, Utc};

/// The largest delay or shift accepted (a year): beyond it is a typo, not a reminder.
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// Ledger steps per occurrence of a recurring action: a campaign has at most 20 actions, so
/// an action's own step is below it and `step % STEP_STRIDE` finds the action again.
pub const STEP_STRIDE: u16 = 32;
/// Occurrences of one recurring action per submission (a year of a daily reminder; the step
/// must fit PostgreSQL's `smallint`).
pub const MAX_OCCURRENCES: usize = 400;

/// A cron pattern: five fields (minute hour day-of-month month day-of-week), or six with
/// seconds first; `L`, `#`, `W` and names as in Vixie cron (the `croner` crate).
pub fn parse_cron(raw: &str) -> Result<croner::Cron, String> {
    use std::str::FromStr as _;
    croner::Cron::from_str(raw.trim())
        .map_err(|e| format!("must be a cron pattern such as \"0 9 * * *\" ({e})"))
}

/// An IANA time zone name (`America/Sao_Paulo`).
pub fn parse_timezone(raw: &str) -> Result<chrono_tz::Tz, String> {
    raw.trim()
        .parse::<chrono_tz::Tz>()
        .map_err(|_| "must be an IANA time zone such as America/Sao_Paulo".to_owned())
}

/// A signed delay: `2h`, `30s`, `1d 12h`, `-1d`.
pub fn parse_delay(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (sign, body) = match raw.strip_prefix('-') {
        Some(rest) => (-1, rest.trim_start()),
        None => (1, raw.strip_prefix('+').unwrap_or(raw)),
    };
    let d = humantime::parse_duration(body)
        .map_err(|e| format!("must be a duration such as 90s, 2h or -1d ({e})"))?;
    if d > MAX_DELAY {
        return Err("must be at most a year".into());
    }
    let d = Duration::from_std(d).map_err(|_| "is out of range".to_owned())?;
    Ok(if sign < 0 { -d } else { d })
}

/// An action's `send_at`.
#[derive(Debug, Clone, PartialEq)]
pub enum SendAt {
    At(DateTime<Utc>),
    /// Rendered with the submission (the template context of the action's message).
    Template(String),
}

/// Parses `send_at`: an RFC 3339 time, or a template that compiles.
pub fn parse_send_at(raw: &str) -> Result<SendAt, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw.trim()) {
        return Ok(SendAt::At(t.with_timezone(&Utc)));
    }
    if !raw.contains("{{") {
        return Err("must be an RFC 3339 time or a template rendering to one".into());
    }
    minijinja::Environment::new()
        .template_from_str(raw)
        .map_err(|e| format!("template does not compile: {e}"))?;
    Ok(SendAt::Template(raw.to_owned()))
}

/// Why a due time could not be worked out for one submission.
#[derive(Debug, thiserror::Error)]
pub enum DueError {
    #[error("send_at does not render: {0}")]
    Render(String),
    #[error("send_at rendered to {0:?}, which is not an RFC 3339 time")]
    NotATime(String),
}

/// A compiled schedule of one action: `None` from [`Schedule::new`] when it is sent at once.
#[derive(Debug)]
pub struct Schedule {
    delay: Duration,
    send_at: Option<SendAtCompiled>,
}

#[derive(Debug)]
enum SendAtCompiled {
    At(DateTime<Utc>),
    Template(Box<minijinja::Environment<'static>>),
}

impl Schedule {
    /// The schedule of an action with these (validated) fields; `None` when it has neither.
    pub fn new(delay: Option<&str>, send_at: Option<&str>) -> Option<Self> {
        if delay.is_none() && send_at.is_none() {
            return None;
        }
        let delay = delay
            .and_then(|d| parse_delay(d).ok())
            .unwrap_or_else(Duration::zero);
        let send_at = send_at.and_then(SendAtCompiled::compile);
        Some(Self { delay, send_at })
    }

    /// Whether the due time depends on the submission (a `send_at` template).
    pub fn needs_submission(&self) -> bool {
        matches!(self.send_at, Some(SendAtCompiled::Template(_)))
    }

    /// When the action is due for a submission matched at `now`; `submission` is the
    /// template context (read only for a `send_at` template).
    pub fn due(
        &self,
        now: DateTime<Utc>,
        submission: impl FnOnce() -> minijinja::Value,
    ) -> Result<DateTime<Utc>, DueError> {
        let base = match &self.send_at {
            None => now,
            Some(at) => at.resolve(submission)?,
        };
        Ok((base + self.delay).max(now))
    }
}

impl SendAtCompiled {
    fn compile(raw: &str) -> Option<Self> {
        match parse_send_at(raw).ok()? {
            SendAt::At(t) => Some(Self::At(t)),
            SendAt::Template(src) => {
                let mut env = minijinja::Environment::new();
                env.add_template_owned("send_at", src).ok()?;
                Some(Self::Template(Box::new(env)))
            }
        }
    }

    fn resolve(
        &self,
        submission: impl FnOnce() -> minijinja::Value,
    ) -> Result<DateTime<Utc>, DueError> {
        match self {
            Self::At(t) => Ok(*t),
            Self::Template(env) => {
                let rendered = env
                    .get_template("send_at")
                    .and_then(|t| t.render(submission()))
                    .map_err(|e| DueError::Render(e.to_string()))?;
                let rendered = rendered.trim();
                Ok(DateTime::parse_from_rfc3339(rendered)
                    .map_err(|_| DueError::NotATime(rendered.chars().take(64).collect()))?
                    .with_timezone(&Utc))
            }
        }
    }
}

/// A compiled recurring action: see the module docs.
#[derive(Debug)]
pub struct Recurrence {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
    until: SendAtCompiled,
}

impl Recurrence {
    /// The recurrence of an action with these (validated) fields; `None` when it has no
    /// `cron`.
    pub fn new(cron: Option<&str>, timezone: Option<&str>, until: Option<&str>) -> Option<Self> {
        let cron = parse_cron(cron?).ok()?;
        let tz = match timezone {
            Some(t) => parse_timezone(t).ok()?,
            None => chrono_tz::UTC,
        };
        let until = SendAtCompiled::compile(until?)?;
        Some(Self { cron, tz, until })
    }

    /// The occurrences for a submission received at `received` and matched at `now`:
    /// `(k, time)` for the k-th occurrence after `received` (from 1), up to `until`, leaving out
    /// those before `now`.
    pub fn occurrences(
        &self,
        received: DateTime<Utc>,
        now: DateTime<Utc>,
        submission: impl FnOnce() -> minijinja::Value,
    ) -> Result<Vec<(u16, DateTime<Utc>)>, DueError> {
        let until = self.until.resolve(submission)?;
        Ok(self
            .cron
            .iter_after(received.with_timezone(&self.tz))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= until)
            .take(MAX_OCCURRENCES)
            .zip(1u16..)
            .filter(|(t, _)| *t >= now)
            .map(|(t, k)| (k, t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_signed_durations_and_nonsense_is_refused() {
        assert_eq!(parse_delay("2h"), Ok(Duration::hours(2)));
        assert_eq!(parse_delay("-1d"), Ok(Duration::days(-1)));
        assert_eq!(parse_delay("1h 30m"), Ok(Duration::minutes(90)));
        assert_eq!(parse_delay("+2s"), Ok(Duration::seconds(2)));
        for bad in ["", "soon", "2 parsecs", "400d", "-"] {
            assert!(parse_delay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn send_at_is_a_time_or_a_template_and_the_delay_shifts_it() {
        let now: DateTime<Utc> = "2026-12-04T10:00:00Z".parse().expect("time");
        let ctx = || minijinja::context! { metadata => minijinja::context! { event_at => "2026-12-10T19:00:00-03:00" } };
        let s = Schedule::new(Some("-1d"), Some("{{ metadata.event_at }}")).expect("scheduled");
        assert!(s.needs_submission());
        assert_eq!(
            s.due(now, ctx).expect("due").to_rfc3339(),
            "2026-12-09T22:00:00+00:00"
        );
        // Only a delay: from the match.
        let s = Schedule::new(Some("2s"), None).expect("scheduled");
        assert_eq!(s.due(now, ctx).expect("due"), now + Duration::seconds(2));
        // Past: now.
        let s = Schedule::new(None, Some("2020-01-01T00:00:00Z")).expect("scheduled");
        assert_eq!(s.due(now, ctx).expect("due"), now);
        // A template that does not render a time names what it rendered.
        let s = Schedule::new(None, Some("{{ metadata.missing }}x")).expect("scheduled");
        assert!(matches!(s.due(now, ctx), Err(DueError::NotATime(r)) if r == "x"));
        assert!(Schedule::new(None, None).is_none());
        assert!(parse_send_at("tomorrow").is_err());
        assert!(parse_send_at("{{ oops").is_err());
    }

    #[test]
    fn recurring_actions_follow_local_time_across_dst_up_to_until_and_skip_the_past() {
        // Daily 09:00 in Berlin over the 2027-03-28 switch to summer time: 08:00 UTC, then 07:00.
        let received: DateTime<Utc> = "2027-03-26T12:00:00Z".parse().expect("time");
        let ctx = || minijinja::context! { metadata => minijinja::context! { event_at => "2027-03-30T09:00:00+02:00" } };
        let r = Recurrence::new(
            Some("0 9 * * *"),
            Some("Europe/Berlin"),
            Some("{{ metadata.event_at }}"),
        )
        .expect("recurring");
        let all = r.occurrences(received, received, ctx).expect("occurrences");
        let times: Vec<String> = all.iter().map(|(_, t)| t.to_rfc3339()).collect();
        assert_eq!(
            times,
            [
                "2027-03-27T08:00:00+00:00",
                "2027-03-28T07:00:00+00:00",
                "2027-03-29T07:00:00+00:00",
                "2027-03-30T07:00:00+00:00", // `until` itself is included
            ]
        );
        assert_eq!(
            all.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // Matched later (a replay): the past ones are left out, the rest keep their numbers.
        let later: DateTime<Utc> = "2027-03-28T12:00:00Z".parse().expect("time");
        let rest = r.occurrences(received, later, ctx).expect("occurrences");
        assert_eq!(rest.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [3, 4]);
        // Capped, and every step still fits a smallint.
        let r = Recurrence::new(Some("* * * * * *"), None, Some("2030-01-01T00:00:00Z"))
            .expect("recurring");
        let many = r.occurrences(received, received, ctx).expect("occurrences");
        assert_eq!(many.len(), MAX_OCCURRENCES);
        assert!(19 + STEP_STRIDE as usize * MAX_OCCURRENCES <= i16::MAX as usize);
        assert!(parse_cron("every day").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(Recurrence::new(None, None, Some("2030-01-01T00:00:00Z")).is_none());
    }
}

//! When a campaign action is due: `delay` ("2h", "-1d") and `send_at` (an RFC 3339 time, or a
//! template over the submission rendering to one, e.g. `{{ metadata.event_at }}`).
//!
//! With both, the delay shifts the time `send_at` names (`send_at` the event, `delay: "-1d"`:
//! the day before). With only a delay, it counts from when the submission is matched. A due
//! time already past means now: a late sign-up still gets its reminder.

use chrono::{DateTime, Duration, Utc};

/// The largest delay or shift accepted (a year): beyond it is a typo, not a reminder.
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

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
        let send_at = match send_at.map(parse_send_at) {
            Some(Ok(SendAt::At(t))) => Some(SendAtCompiled::At(t)),
            Some(Ok(SendAt::Template(src))) => {
                let mut env = minijinja::Environment::new();
                env.add_template_owned("send_at", src).ok()?;
                Some(SendAtCompiled::Template(Box::new(env)))
            }
            Some(Err(_)) | None => None,
        };
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
            Some(SendAtCompiled::At(t)) => *t,
            Some(SendAtCompiled::Template(env)) => {
                let rendered = env
                    .get_template("send_at")
                    .and_then(|t| t.render(submission()))
                    .map_err(|e| DueError::Render(e.to_string()))?;
                let rendered = rendered.trim();
                DateTime::parse_from_rfc3339(rendered)
                    .map_err(|_| DueError::NotATime(rendered.chars().take(64).collect()))?
                    .with_timezone(&Utc)
            }
        };
        Ok((base + self.delay).max(now))
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
}

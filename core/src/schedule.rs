//! When a campaign action is due: `delay` ("2h", "-1d") and `send_at` (an RFC 3339 time, or a
//! template over the submission rendering to one, e.g. `{{ metadata.event_at }}`).
//!
//! With both, the delay shifts the time `send_at` names (`send_at` the event, `delay: "-1d"`:
//! the day before). With only a delay, it counts from when the submission is matched. A due
//! time already past means now: a late sign-up still gets its reminder.
//!
//! A recurring action (`cron`, in a `timezone`, `until` a time or a template) is sent at every
//! occurrence of the pattern after the submission was received and up to `until` (at most
//! [`MAX_OCCURRENCES`], or the action's `max_occurrences`, required when the pattern repeats
//! more often than hourly); occurrences already past when it is matched are skipped (a replay
//! does not send yesterday's digest). Occurrence `k` (from 1) of the action with step `s` is
//! ledger step `s + k * STEP_STRIDE`, so each has its own ledger row and job id, the same in
//! every run. Only the next occurrence is written when the submission is matched
//! ([`Recurrence::first`]); the firer writes each one after when it fires the one before
//! ([`Cadence::next_after`]), so a year of a daily digest is one waiting row, not 365.

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
    crate::template::check(raw).map_err(|e| format!("template does not compile: {e}"))?;
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
                let mut env = crate::template::environment();
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

/// How often a recurring action repeats: its cron pattern in its time zone, and at most
/// how many times per submission.
#[derive(Debug)]
pub struct Cadence {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
    max: u16,
}

/// The shortest interval a recurring action may have without `max_occurrences`: more often
/// than hourly, an uncapped pattern is a flood (`* * * * *` until next month is 40,000 texts).
pub const MIN_UNCAPPED_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Cadence {
    /// The cadence of an action with these (validated) fields; `None` without `cron`.
    pub fn new(cron: Option<&str>, timezone: Option<&str>, max: Option<u16>) -> Option<Self> {
        let cron = parse_cron(cron?).ok()?;
        let tz = match timezone {
            Some(t) => parse_timezone(t).ok()?,
            None => chrono_tz::UTC,
        };
        let max = max.map_or(MAX_OCCURRENCES as u16, |m| m.min(MAX_OCCURRENCES as u16));
        Some(Self { cron, tz, max })
    }

    /// The `k`-th occurrence's successor, after `t`: `(k + 1, time)` while it is within the
    /// cap and not after `until`.
    pub fn next_after(
        &self,
        k: u16,
        t: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<(u16, DateTime<Utc>)> {
        if k >= self.max {
            return None;
        }
        let next = self
            .cron
            .iter_after(t.with_timezone(&self.tz))
            .next()?
            .with_timezone(&Utc);
        (next <= until).then_some((k + 1, next))
    }
}

/// The shortest interval between two occurrences of `cron` in `tz` over a sample of them (a
/// year of an hourly pattern; any pattern repeats within a year).
pub fn shortest_interval(cron: &croner::Cron, tz: chrono_tz::Tz) -> Option<std::time::Duration> {
    let start = DateTime::<Utc>::from_timestamp(1_798_761_600, 0)?.with_timezone(&tz); // 2027-01-01
    let times: Vec<DateTime<Utc>> = cron
        .iter_after(start)
        .take(1000)
        .map(|t| t.with_timezone(&Utc))
        .collect();
    times
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .min()
}

/// The occurrence written when a submission is matched: `(k, time, until)`.
pub type FirstOccurrence = (u16, DateTime<Utc>, DateTime<Utc>);

/// A compiled recurring action: see the module docs.
#[derive(Debug)]
pub struct Recurrence {
    cadence: Cadence,
    until: SendAtCompiled,
}

impl Recurrence {
    /// The recurrence of an action with these (validated) fields; `None` when it has no
    /// `cron`.
    pub fn new(
        cron: Option<&str>,
        timezone: Option<&str>,
        until: Option<&str>,
        max: Option<u16>,
    ) -> Option<Self> {
        let cadence = Cadence::new(cron, timezone, max)?;
        let until = SendAtCompiled::compile(until?)?;
        Some(Self { cadence, until })
    }

    /// The occurrence to schedule for a submission received at `received` and matched at
    /// `now`: `(k, time, until)` for the first occurrence after `received` (numbered from 1)
    /// that is not before `now`; only that one is written, and the firer writes each next one
    /// when it fires the one before ([`Cadence::next_after`]). `None` when none is left.
    pub fn first(
        &self,
        received: DateTime<Utc>,
        now: DateTime<Utc>,
        submission: impl FnOnce() -> minijinja::Value,
    ) -> Result<Option<FirstOccurrence>, DueError> {
        let until = self.until.resolve(submission)?;
        let c = &self.cadence;
        Ok(c.cron
            .iter_after(received.with_timezone(&c.tz))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= until)
            .take(usize::from(c.max))
            .zip(1u16..)
            .find(|(t, _)| *t >= now)
            .map(|(t, k)| (k, t, until)))
    }

    /// Every occurrence from [`Recurrence::first`] on, as the firer would write them one by
    /// one (tests and documentation).
    pub fn occurrences(
        &self,
        received: DateTime<Utc>,
        now: DateTime<Utc>,
        submission: impl FnOnce() -> minijinja::Value,
    ) -> Result<Vec<(u16, DateTime<Utc>)>, DueError> {
        let Some((mut k, mut t, until)) = self.first(received, now, submission)? else {
            return Ok(Vec::new());
        };
        let mut out = vec![(k, t)];
        while let Some((k2, t2)) = self.cadence.next_after(k, t, until) {
            out.push((k2, t2));
            (k, t) = (k2, t2);
        }
        Ok(out)
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
            None,
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
        let r = Recurrence::new(
            Some("* * * * * *"),
            None,
            Some("2030-01-01T00:00:00Z"),
            None,
        )
        .expect("recurring");
        let many = r.occurrences(received, received, ctx).expect("occurrences");
        assert_eq!(many.len(), MAX_OCCURRENCES);
        assert!(19 + STEP_STRIDE as usize * MAX_OCCURRENCES <= i16::MAX as usize);
        assert!(parse_cron("every day").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(Recurrence::new(None, None, Some("2030-01-01T00:00:00Z"), None).is_none());
        // A cap lowers the count; the firer's step from one occurrence to the next.
        let r = Recurrence::new(
            Some("0 9 * * *"),
            None,
            Some("2030-01-01T00:00:00Z"),
            Some(3),
        )
        .expect("recurring");
        let three = r.occurrences(received, received, ctx).expect("occurrences");
        assert_eq!(three.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 2, 3]);
        let c = Cadence::new(Some("0 9 * * *"), None, Some(3)).expect("cadence");
        let until: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().expect("time");
        assert_eq!(c.next_after(1, three[0].1, until), Some((2, three[1].1)));
        assert_eq!(c.next_after(3, three[2].1, until), None, "capped");
        assert_eq!(c.next_after(1, three[0].1, three[0].1), None, "past until");
        // Intervals: hourly is the shortest an uncapped action may repeat.
        let every = |p: &str| shortest_interval(&parse_cron(p).expect("cron"), chrono_tz::UTC);
        assert_eq!(every("0 * * * *"), Some(MIN_UNCAPPED_INTERVAL));
        assert_eq!(
            every("*/10 * * * *"),
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(every("0 9,10 * * *"), Some(MIN_UNCAPPED_INTERVAL));
        assert_eq!(
            every("0 9 * * 1"),
            Some(std::time::Duration::from_secs(7 * 86400))
        );
    }
}

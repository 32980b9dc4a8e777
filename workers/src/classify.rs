//! Provider outcomes, classified by a table kept as data (contract §3).

use quizflow_core::Outcome;
use std::time::Duration;

/// Provider error codes by class: the table. Codes not listed fall back to the HTTP status.
pub struct CodeTable {
    /// The person opted out with the provider: suppress the contact (contract §3.2).
    pub opt_out: &'static [i64],
    pub permanent: &'static [i64],
    pub throttle: &'static [i64],
}

pub const TWILIO: CodeTable = CodeTable {
    opt_out: &[21610],
    permanent: &[21211, 21612, 21614],
    throttle: &[20429],
};

pub const WHATSAPP: CodeTable = CodeTable {
    opt_out: &[131050],
    // 131026: not on WhatsApp; 1320xx: the template (missing, wrong parameters, paused).
    permanent: &[
        131026, 132000, 132001, 132005, 132007, 132012, 132015, 132016,
    ],
    throttle: &[130429, 131056],
};

/// Codes that say the person is not on the channel at all (WhatsApp 131026): permanent, and
/// what arms a `not_on_channel` fallback.
pub const NOT_ON_CHANNEL: &[i64] = &[131026];

/// Whether a permanent outcome's reason is a [`NOT_ON_CHANNEL`] answer ([`classify_http`]
/// writes the code as `code N:`).
pub fn not_on_channel(reason: &str) -> bool {
    NOT_ON_CHANNEL
        .iter()
        .any(|c| reason.contains(&format!(" code {c}:")))
}

pub const NONE: CodeTable = CodeTable {
    opt_out: &[],
    permanent: &[],
    throttle: &[],
};

/// Classifies an HTTP answer: `code` is the provider's own error code, if its body had one.
pub fn classify_http(
    table: &CodeTable,
    status: u16,
    code: Option<i64>,
    retry_after: Option<Duration>,
    detail: String,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    if let Some(code) = code {
        if table.opt_out.contains(&code) {
            return Outcome::Suppress {
                reason: quizflow_core::consent::Reason::ProviderOptOut,
                detail: format!("{status} code {code}: {detail}"),
            };
        }
        if table.permanent.contains(&code) {
            return Outcome::Permanent(format!("{status} code {code}: {detail}"));
        }
        if table.throttle.contains(&code) {
            return Outcome::Throttle {
                retry_after,
                detail: format!("{status} code {code}: {detail}"),
            };
        }
    }
    match status {
        429 => Outcome::Throttle {
            retry_after,
            detail: format!("429: {detail}"),
        },
        // Redirects are never followed (contract §4): a target that redirects will not work.
        300..=399 => Outcome::Permanent(format!("{status}: redirect not followed")),
        408 | 409 => Outcome::Transient(format!("{status}: {detail}")),
        400..=499 => Outcome::Permanent(format!("{status}: {detail}")),
        // A 5xx after the request reached the provider: it may have been accepted.
        500 | 502 | 504 => Outcome::Uncertain(format!("{status}: {detail}")),
        _ => Outcome::Transient(format!("{status}: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_table() {
        let c = |t: &CodeTable, s, code| classify_http(t, s, code, None, String::new());
        assert_eq!(c(&TWILIO, 201, None), Outcome::Sent);
        assert!(matches!(
            c(&TWILIO, 400, Some(21211)),
            Outcome::Permanent(_)
        ));
        assert!(matches!(
            c(&TWILIO, 400, Some(21614)),
            Outcome::Permanent(_)
        ));
        assert!(matches!(
            c(&TWILIO, 429, Some(20429)),
            Outcome::Throttle { .. }
        ));
        assert!(matches!(
            c(&WHATSAPP, 400, Some(131026)),
            Outcome::Permanent(_)
        ));
        assert!(matches!(
            c(&TWILIO, 400, Some(21610)),
            Outcome::Suppress { .. }
        ));
        assert!(matches!(
            c(&WHATSAPP, 400, Some(131050)),
            Outcome::Suppress { .. }
        ));
        assert!(matches!(
            c(&WHATSAPP, 400, Some(131056)),
            Outcome::Throttle { .. }
        ));
        assert!(matches!(c(&NONE, 429, None), Outcome::Throttle { .. }));
        assert!(matches!(c(&NONE, 408, None), Outcome::Transient(_)));
        assert!(matches!(c(&NONE, 409, None), Outcome::Transient(_)));
        assert!(matches!(c(&NONE, 404, None), Outcome::Permanent(_)));
        assert!(matches!(c(&NONE, 503, None), Outcome::Transient(_)));
        assert!(matches!(c(&NONE, 500, None), Outcome::Uncertain(_)));
    }
}

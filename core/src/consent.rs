//! The people quizflow messages (contract §3.2): contacts normalised and hashed under
//! `QUIZFLOW_HASH_KEY` (a suppression names a person without holding their contact, so it
//! outlives an erasure), a campaign's purpose, why a contact is suppressed, the signed
//! unsubscribe token, opt-out keywords, frequency caps and send windows.

use crate::signatures::hmac_sha256;
use crate::Channel;
use base64::Engine;
use chrono::{DateTime, Duration as Span, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A contact's keyed hash: HMAC-SHA256 of its normalised form.
pub type ContactHash = [u8; 32];

/// The key every contact hash and unsubscribe token is made with (`QUIZFLOW_HASH_KEY`).
/// Changing it orphans every suppression, so the database keeps its fingerprint and a process
/// started with another key refuses to run.
#[derive(Clone)]
pub struct HashKey(Vec<u8>);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(***)")
    }
}

/// The shortest key accepted: 128 bits written as hex or 22 base64 characters.
pub const MIN_KEY_LEN: usize = 22;

impl HashKey {
    /// A key from its configured text (at least [`MIN_KEY_LEN`] characters).
    pub fn new(secret: &str) -> Result<Self, String> {
        let s = secret.trim();
        if s.len() < MIN_KEY_LEN {
            return Err(format!(
                "QUIZFLOW_HASH_KEY must be at least {MIN_KEY_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self(s.as_bytes().to_vec()))
    }

    /// A fixed key for tests and benchmarks; never for a deployment (the binary requires one).
    pub fn for_tests() -> Self {
        Self(b"quizflow-test-key-not-for-production".to_vec())
    }

    /// What the database keeps to notice a changed key (not the key: a one-way digest).
    pub fn fingerprint(&self) -> Vec<u8> {
        hmac_sha256(&self.0, &[b"quizflow hash key fingerprint"]).to_vec()
    }

    /// The hash of a contact already normalised.
    pub fn hash_normalised(&self, kind: ContactKind, normalised: &str) -> ContactHash {
        hmac_sha256(
            &self.0,
            &[kind.as_str().as_bytes(), b":", normalised.as_bytes()],
        )
    }

    /// The hash of the contact a channel sends to (phone for sms and WhatsApp, e-mail for
    /// e-mail); `None` for webhooks and for what does not normalise.
    pub fn hash(&self, channel: Channel, raw: &str) -> Option<ContactHash> {
        let kind = ContactKind::of(channel)?;
        Some(self.hash_normalised(kind, &kind.normalise(raw)?))
    }

    /// A person's hashes on every channel that reaches them (their phone on sms and WhatsApp,
    /// their e-mail on e-mail): what their suppression-list entries are keyed by.
    pub fn person_hashes(
        &self,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> Vec<(Channel, ContactHash)> {
        [
            (Channel::Sms, phone),
            (Channel::Whatsapp, phone),
            (Channel::Email, email),
        ]
        .into_iter()
        .filter_map(|(c, contact)| Some((c, self.hash(c, contact?)?)))
        .collect()
    }

    /// The unsubscribe token of (channel, purpose, contact): the three, and a MAC over them.
    /// No contact in it, so it keeps working after the person is erased.
    pub fn unsubscribe_token(
        &self,
        channel: Channel,
        purpose: Purpose,
        hash: &ContactHash,
    ) -> String {
        let mut payload = Vec::with_capacity(34);
        payload.push(channel_byte(channel));
        payload.push(purpose as u8);
        payload.extend_from_slice(hash);
        let mac = hmac_sha256(&self.0, &[b"unsubscribe:", &payload]);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}", b64.encode(&payload), b64.encode(&mac[..16]))
    }

    /// What a token names, when this key made it.
    pub fn open_unsubscribe(&self, token: &str) -> Option<(Channel, Purpose, ContactHash)> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (payload, mac) = token.split_once('.')?;
        let payload = b64.decode(payload).ok()?;
        let mac = b64.decode(mac).ok()?;
        let expected = hmac_sha256(&self.0, &[b"unsubscribe:", &payload]);
        let same: bool = subtle::ConstantTimeEq::ct_eq(&expected[..16], mac.as_slice()).into();
        if !same || payload.len() != 34 {
            return None;
        }
        let channel = *Channel::ALL
            .iter()
            .find(|c| channel_byte(**c) == payload[0])?;
        let purpose = [Purpose::Marketing, Purpose::Transactional]
            .into_iter()
            .find(|p| *p as u8 == payload[1])?;
        let hash: ContactHash = payload[2..].try_into().ok()?;
        Some((channel, purpose, hash))
    }
}

fn channel_byte(c: Channel) -> u8 {
    match c {
        Channel::Sms => 1,
        Channel::Whatsapp => 2,
        Channel::Email => 3,
        Channel::Webhook => 4,
    }
}

/// Which kind of contact a hash is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactKind {
    Phone,
    Email,
}

impl ContactKind {
    pub fn of(channel: Channel) -> Option<Self> {
        match channel {
            Channel::Sms | Channel::Whatsapp => Some(Self::Phone),
            Channel::Email => Some(Self::Email),
            Channel::Webhook => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Email => "email",
        }
    }

    pub fn normalise(self, raw: &str) -> Option<String> {
        match self {
            Self::Phone => normalise_phone(raw),
            Self::Email => normalise_email(raw),
        }
    }
}

/// A phone number in E.164, however a provider wrote it: Twilio's `whatsapp:` prefix
/// removed, a WhatsApp `wa_id` (digits only) given its `+`, spaces and punctuation dropped,
/// and a Brazilian mobile number written without its ninth digit (as WhatsApp reports older
/// accounts) given it back. `None` when it is not a phone number.
pub fn normalise_phone(raw: &str) -> Option<String> {
    let s = raw.trim();
    let s = s.strip_prefix("whatsapp:").unwrap_or(s).trim();
    let mut digits = String::with_capacity(16);
    for (i, ch) in s.chars().enumerate() {
        match ch {
            '0'..='9' => digits.push(ch),
            '+' if i == 0 => {}
            ' ' | '-' | '(' | ')' | '.' => {}
            _ => return None,
        }
    }
    // Brazil: +55, two-digit area code, then a mobile's eight digits (starting 6 to 9) that
    // have since 2016 been nine, the first a 9.
    if digits.len() == 12 && digits.starts_with("55") && matches!(digits.as_bytes()[4], b'6'..=b'9')
    {
        digits.insert(4, '9');
    }
    let e164 = format!("+{digits}");
    crate::is_e164(&e164).then_some(e164)
}

/// An e-mail address as its hash is taken: trimmed and lowercased.
pub fn normalise_email(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    (s.contains('@') && !s.contains(char::is_whitespace)).then_some(s)
}

/// What a campaign sends for: marketing (the default) stops for anyone who left marketing; a
/// transactional message (a ticket, a billing notice) stops only for a channel-wide opt-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    #[default]
    Marketing = 1,
    Transactional = 2,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Marketing => "marketing",
            Self::Transactional => "transactional",
        }
    }
}

/// Which purposes a suppression covers: marketing only (an unsubscribe link, a complaint), or
/// every purpose on its channel (a STOP reply, a provider's opt-out, a hard bounce: the
/// provider would refuse them anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Marketing,
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Marketing => "marketing",
            Self::All => "all",
        }
    }

    pub fn covers(self, purpose: Purpose) -> bool {
        self == Self::All || purpose == Purpose::Marketing
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "marketing" => Ok(Self::Marketing),
            "all" => Ok(Self::All),
            other => Err(format!("unknown purpose {other:?} (marketing or all)")),
        }
    }
}

/// Why a contact is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A STOP / SAIR / PARAR / CANCELAR reply.
    OptOutKeyword,
    /// The unsubscribe link or the one-click `List-Unsubscribe` POST.
    UnsubscribeLink,
    HardBounce,
    Complaint,
    /// The provider refused: the person opted out with it (Twilio 21610, WhatsApp 131050).
    ProviderOptOut,
    /// Added through the API or imported.
    Admin,
    /// Blocklisted: intake refuses the contact's leads (403 `blocked`), and nothing is sent.
    Blocked,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Self::OptOutKeyword,
        Self::UnsubscribeLink,
        Self::HardBounce,
        Self::Complaint,
        Self::ProviderOptOut,
        Self::Admin,
        Self::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OptOutKeyword => "opt_out_keyword",
            Self::UnsubscribeLink => "unsubscribe_link",
            Self::HardBounce => "hard_bounce",
            Self::Complaint => "complaint",
            Self::ProviderOptOut => "provider_opt_out",
            Self::Admin => "admin",
            Self::Blocked => "blocked",
        }
    }

    /// The purposes a suppression for this reason covers (contract §3.2).
    pub fn scope(self) -> Scope {
        match self {
            Self::UnsubscribeLink | Self::Complaint => Scope::Marketing,
            _ => Scope::All,
        }
    }

    /// Lifted by a START / VOLTAR reply: what a keyword (at quizflow or at the carrier) put.
    pub fn lifted_by_keyword(self) -> bool {
        matches!(self, Self::OptOutKeyword | Self::ProviderOptOut)
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reason {s:?}"))
    }
}

/// What a reply's text asks for, against the configured keyword lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    OptOut,
    OptIn,
}

/// The keyword a whole reply is (case, accents, surrounding spaces and punctuation ignored),
/// if any: `" Sair! "` is `SAIR`; `"quero sair"` is not a keyword.
pub fn keyword(text: &str, opt_out: &[String], opt_in: &[String]) -> Option<Keyword> {
    let t = fold(text);
    if t.is_empty() {
        return None;
    }
    let is = |list: &[String]| list.iter().any(|k| fold(k) == t);
    if is(opt_out) {
        Some(Keyword::OptOut)
    } else if is(opt_in) {
        Some(Keyword::OptIn)
    } else {
        None
    }
}

/// Upper case, Latin accents removed, punctuation around the word trimmed.
fn fold(s: &str) -> String {
    s.trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ã' | 'ä' | 'Á' | 'À' | 'Â' | 'Ã' | 'Ä' => 'A',
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => 'E',
            'í' | 'ì' | 'î' | 'ï' | 'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
            'ó' | 'ò' | 'ô' | 'õ' | 'ö' | 'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'O',
            'ú' | 'ù' | 'û' | 'ü' | 'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
            'ç' | 'Ç' => 'C',
            'ñ' | 'Ñ' => 'N',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// At most `count` messages per recipient per rolling `window` (`"3/24h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub count: u32,
    pub window: Duration,
}

impl FromStr for FrequencyCap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: a frequency cap is <count>/<window>, e.g. \"3/24h\"");
        let (n, w) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let window = humantime::parse_duration(w.trim()).map_err(|_| bad())?;
        // Counted sends are kept this long (quizflow_store::consent::LONGEST_CAP_WINDOW_DAYS).
        if count == 0 || window.is_zero() || window > Duration::from_secs(31 * 86_400) {
            return Err(format!(
                "{s:?}: the count must be positive and the window at most 31 days"
            ));
        }
        Ok(Self { count, window })
    }
}

impl fmt::Display for FrequencyCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest whole unit: `3/24h` reads back as `3/1d`.
        let s = self.window.as_secs();
        let (n, unit) = match s {
            _ if s.is_multiple_of(86_400) => (s / 86_400, "d"),
            _ if s.is_multiple_of(3_600) => (s / 3_600, "h"),
            _ if s.is_multiple_of(60) => (s / 60, "m"),
            _ => (s, "s"),
        };
        write!(f, "{}/{n}{unit}", self.count)
    }
}

impl Serialize for FrequencyCap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FrequencyCap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Quiet hours: messages go out between `from` and `to` local time (`to` before `from`: a
/// window over midnight), in the respondent's time zone when the submission names one, else
/// the window's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendWindow {
    pub from: String,
    pub to: String,
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// A send window, parsed.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    from: NaiveTime,
    to: NaiveTime,
    tz: chrono_tz::Tz,
}

impl SendWindow {
    pub fn parse(&self) -> Result<Window, String> {
        let time = |s: &str| {
            NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("{s:?} is not HH:MM"))
        };
        let (from, to) = (time(&self.from)?, time(&self.to)?);
        if from == to {
            return Err("from and to must differ".into());
        }
        Ok(Window {
            from,
            to,
            tz: crate::schedule::parse_timezone(&self.timezone)?,
        })
    }
}

impl Window {
    /// When a message due at `due` may go: `None` when `due` is inside the window, else the
    /// window's next opening (in `respondent_tz` when it names a zone). Daylight saving is the
    /// zone's: an opening inside a spring-forward gap moves to the end of the gap.
    pub fn defer(&self, due: DateTime<Utc>, respondent_tz: Option<&str>) -> Option<DateTime<Utc>> {
        let tz = respondent_tz
            .and_then(|t| t.parse::<chrono_tz::Tz>().ok())
            .unwrap_or(self.tz);
        let local = due.with_timezone(&tz).naive_local();
        let t = local.time();
        let inside = if self.from < self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        };
        if inside {
            return None;
        }
        let day = if self.from < self.to && t >= self.to {
            local.date() + Span::days(1)
        } else {
            local.date()
        };
        let mut opening = day.and_time(self.from);
        // A gap (the clock jumps over the opening): the first local time that exists after it.
        for _ in 0..8 {
            if let Some(at) = tz.from_local_datetime(&opening).earliest() {
                return Some(at.with_timezone(&Utc).max(due));
            }
            opening += Span::minutes(30);
        }
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalise_to_e164_however_written() {
        let n = |s| normalise_phone(s);
        assert_eq!(n("+5511987654321").as_deref(), Some("+5511987654321"));
        assert_eq!(
            n("whatsapp:+5511987654321").as_deref(),
            Some("+5511987654321")
        );
        assert_eq!(n("5511987654321").as_deref(), Some("+5511987654321"));
        // WhatsApp's wa_id of an older Brazilian account: the ninth digit restored.
        assert_eq!(n("551187654321").as_deref(), Some("+5511987654321"));
        // A Brazilian landline (starts 2 to 5) keeps its eight digits.
        assert_eq!(n("+551132654321").as_deref(), Some("+551132654321"));
        assert_eq!(n("+1 (415) 555-0100").as_deref(), Some("+14155550100"));
        assert_eq!(n("ana@example.com"), None);
        assert_eq!(n("+12"), None);
    }

    #[test]
    fn hashes_agree_across_spellings_and_differ_across_kinds() {
        let k = HashKey::for_tests();
        assert_eq!(
            k.hash(Channel::Sms, "whatsapp:551187654321"),
            k.hash(Channel::Whatsapp, "+5511987654321")
        );
        assert_eq!(
            k.hash(Channel::Email, " Ana@Example.COM "),
            k.hash(Channel::Email, "ana@example.com")
        );
        assert_eq!(k.hash(Channel::Webhook, "https://x"), None);
        let other = HashKey::new("another-key-of-enough-length").expect("key");
        assert_ne!(
            k.hash(Channel::Sms, "+5511987654321"),
            other.hash(Channel::Sms, "+5511987654321")
        );
        assert!(HashKey::new("short").is_err());
    }

    #[test]
    fn an_unsubscribe_token_opens_only_with_its_key_and_unchanged() {
        let k = HashKey::for_tests();
        let h = k.hash(Channel::Email, "ana@example.com").expect("hash");
        let t = k.unsubscribe_token(Channel::Email, Purpose::Marketing, &h);
        assert!(!t.contains("ana"));
        assert_eq!(
            k.open_unsubscribe(&t),
            Some((Channel::Email, Purpose::Marketing, h))
        );
        let other = HashKey::new("another-key-of-enough-length").expect("key");
        assert_eq!(other.open_unsubscribe(&t), None);
        let mut tampered = t.clone().into_bytes();
        tampered[3] ^= 1;
        assert_eq!(
            k.open_unsubscribe(&String::from_utf8_lossy(&tampered)),
            None
        );
        assert_eq!(k.open_unsubscribe("garbage"), None);
    }

    #[test]
    fn keywords_ignore_case_accents_and_punctuation() {
        let out: Vec<String> = ["STOP", "SAIR", "PARAR", "CANCELAR", "UNSUBSCRIBE"]
            .map(String::from)
            .to_vec();
        let inn: Vec<String> = ["START", "VOLTAR"].map(String::from).to_vec();
        assert_eq!(keyword(" sair! ", &out, &inn), Some(Keyword::OptOut));
        assert_eq!(keyword("Párar", &out, &inn), Some(Keyword::OptOut));
        assert_eq!(keyword("voltar", &out, &inn), Some(Keyword::OptIn));
        assert_eq!(keyword("quero sair", &out, &inn), None);
        assert_eq!(keyword("", &out, &inn), None);
    }

    #[test]
    fn caps_parse() {
        let c: FrequencyCap = "3/24h".parse().expect("cap");
        assert_eq!((c.count, c.window), (3, Duration::from_secs(86_400)));
        assert_eq!(c.to_string(), "3/1d");
        assert_eq!(
            "2/90m".parse::<FrequencyCap>().map(|c| c.to_string()),
            Ok("2/90m".into())
        );
        assert!("0/1h".parse::<FrequencyCap>().is_err());
        assert!("3".parse::<FrequencyCap>().is_err());
        assert!("3/forever".parse::<FrequencyCap>().is_err());
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_closed_window_defers_to_its_next_opening_in_the_right_zone() {
        let w = SendWindow {
            from: "09:00".into(),
            to: "21:00".into(),
            timezone: "America/Sao_Paulo".into(),
        }
        .parse()
        .expect("window");
        // 23:00 in São Paulo (UTC-3): tomorrow 09:00 local = 12:00Z.
        assert_eq!(
            w.defer(at("2026-12-08T02:00:00Z"), None),
            Some(at("2026-12-08T12:00:00Z"))
        );
        // 07:00 local: today 09:00.
        assert_eq!(
            w.defer(at("2026-12-08T10:00:00Z"), None),
            Some(at("2026-12-08T12:00:00Z"))
        );
        assert_eq!(w.defer(at("2026-12-08T15:00:00Z"), None), None);
        // The respondent's zone wins: 15:00Z is 00:00 in Tokyo → 09:00 Tokyo = 00:00Z.
        assert_eq!(
            w.defer(at("2026-12-08T15:00:00Z"), Some("Asia/Tokyo")),
            Some(at("2026-12-09T00:00:00Z"))
        );
        // Over midnight.
        let night = SendWindow {
            from: "22:00".into(),
            to: "06:00".into(),
            timezone: "UTC".into(),
        }
        .parse()
        .expect("window");
        assert_eq!(night.defer(at("2026-12-08T23:00:00Z"), None), None);
        assert_eq!(
            night.defer(at("2026-12-08T12:00:00Z"), None),
            Some(at("2026-12-08T22:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_moves_the_opening_with_the_clock() {
        let w = SendWindow {
            from: "09:00".into(),
            to: "21:00".into(),
            timezone: "America/New_York".into(),
        }
        .parse()
        .expect("window");
        // Before the change (EST, UTC-5) and after it (2027-03-14, EDT, UTC-4).
        assert_eq!(
            w.defer(at("2027-03-13T03:00:00Z"), None),
            Some(at("2027-03-13T14:00:00Z"))
        );
        assert_eq!(
            w.defer(at("2027-03-14T03:00:00Z"), None),
            Some(at("2027-03-14T13:00:00Z"))
        );
        // An opening inside the spring-forward gap (02:30 does not exist on 2027-03-14).
        let gap = SendWindow {
            from: "02:30".into(),
            to: "05:00".into(),
            timezone: "America/New_York".into(),
        }
        .parse()
        .expect("window");
        assert_eq!(
            gap.defer(at("2027-03-14T06:00:00Z"), None),
            Some(at("2027-03-14T07:00:00Z"))
        );
    }
}

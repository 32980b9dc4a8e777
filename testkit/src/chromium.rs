//! Headless Chromium (Debian's package, never a downloaded browser) for tests that need a real
//! browser: the dashboard, and quiz pages posting leads across origins.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `QUIZFLOW_CHROMIUM`, or Debian's `/usr/bin/chromium`; panics naming how to get it.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("QUIZFLOW_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium (scripts/dev.sh test does) or set QUIZFLOW_CHROMIUM",
        path.display()
    );
    path
}

/// Headless Chromium with the flags a closed network needs, in the profile directory given.
pub fn headless(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        // Lets the page run its fetches (virtual time stops while a fetch is on the wire).
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The DOM of `url` once its scripts ran, from a fresh profile.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let out = headless(profile.path())
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

/// The text of the element with `id` (the test pages write plain text into it).
pub fn text_by_id(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("#{id} not in the page: {dom}"));
    let rest = &dom[at..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest[open..].find('<').expect("text end");
    rest[open..open + close].to_owned()
}

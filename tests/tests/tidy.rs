//! One home per rule, checked by `cargo test` (after rust-analyzer's `tidy`): the rules
//! ARCHITECTURE.md states are kept by this test, not by memory.
//!
//! - SQL is written only in `store/` (and `migrations/`);
//! - subjects and stream names are spelled only in `nats/`;
//! - every source file starts with a `//!` doc saying what it is for;
//! - every code path README.md or ARCHITECTURE.md names exists;
//! - no production file is longer than 600 lines and no function longer than 80, outside tests
//!   (the debts still being paid are listed in [`DEBTS`], and may only shrink).
//!
//! Every configuration key in README's table is checked by the binary's own unit test
//! (`every_key_is_in_the_readme_table`), which reads the keys off the configuration itself.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

/// Files and functions over the limits, with the size they may not exceed: the debts. Paying
/// one off means removing its line (an entry that is no longer over the limit fails too).
const DEBTS: &[(&str, usize)] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `.rs` file of the workspace, relative to its root, with its text.
fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a directory").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                let rel = path
                    .strip_prefix(root())
                    .expect("under the root")
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).expect("read a source file");
                out.push((rel, text));
            }
        }
    }
    out.sort();
    out
}

/// Production code: a crate's `src/`, not its tests, benches or the test kit.
fn is_production(path: &str) -> bool {
    path.contains("/src/") && !path.starts_with("testkit/") && !path.starts_with("tests/")
}

/// The part of a file before its `#[cfg(test)]` module (a `#[cfg(test)]` import does not
/// end it).
fn production_part(text: &str) -> &str {
    let mut at = 0;
    while let Some(i) = text[at..].find("\n#[cfg(test)]\n") {
        let start = at + i;
        let rest = text[start + 14..].trim_start_matches(|c: char| c != '\n' && c.is_whitespace());
        let next = rest
            .lines()
            .find(|l| !l.starts_with("#["))
            .unwrap_or_default();
        if next.starts_with("mod ") {
            return &text[..start];
        }
        at = start + 1;
    }
    text
}

/// Rust source with comments blanked and string and char literals kept as their delimiters
/// only (each line kept, so line numbers hold), plus the literals' contents by line.
struct Lexed {
    code: Vec<String>,
    literals: Vec<(usize, String)>,
}

fn lex(text: &str) -> Lexed {
    let chars: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let mut literals = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let push_newlines = |s: &str, code: &mut String, line: &mut usize| {
        for c in s.chars().filter(|c| *c == '\n') {
            code.push(c);
            *line += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let (mut depth, start) = (0, i);
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            let s: String = chars[start..i.min(chars.len())].iter().collect();
            push_newlines(&s, &mut code, &mut line);
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                code.push(c);
                i += 1;
                continue;
            }
            let start = j + 1;
            let mut k = start;
            'raw: while k < chars.len() {
                if chars[k] == '"' && (0..hashes).all(|h| chars.get(k + 1 + h) == Some(&'#')) {
                    break 'raw;
                }
                k += 1;
            }
            let s: String = chars[start..k.min(chars.len())].iter().collect();
            literals.push((line, s.clone()));
            code.push_str("\"\"");
            push_newlines(&s, &mut code, &mut line);
            i = k + 1 + hashes;
        } else if c == '"' {
            let start = i + 1;
            let mut k = start;
            while k < chars.len() && chars[k] != '"' {
                if chars[k] == '\\' {
                    k += 1;
                }
                k += 1;
            }
            let s: String = chars[start..k.min(chars.len())].iter().collect();
            literals.push((line, s.clone()));
            code.push_str("\"\"");
            push_newlines(&s, &mut code, &mut line);
            i = k + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let is_char = next == Some('\\') || chars.get(i + 2) == Some(&'\'');
            if is_char {
                let mut k = i + 1;
                while k < chars.len() && chars[k] != '\'' {
                    if chars[k] == '\\' {
                        k += 1;
                    }
                    k += 1;
                }
                code.push_str("' '");
                i = k + 1;
            } else {
                code.push(c);
                i += 1;
            }
        } else {
            if c == '\n' {
                line += 1;
            }
            code.push(c);
            i += 1;
        }
    }
    Lexed {
        code: code.split('\n').map(str::to_owned).collect(),
        literals,
    }
}

/// Every function with a body: (name, first line, lines).
fn functions(lexed: &Lexed) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (n, l) in lexed.code.iter().enumerate() {
        let Some(at) = find_fn(l) else { continue };
        let name: String = l[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body: from the first `{` (before any `;`) to its matching `}`.
        let (mut depth, mut opened) = (0i32, false);
        'lines: for (m, l2) in lexed.code.iter().enumerate().skip(n) {
            let from = if m == n { at } else { 0 };
            for c in l2[from..].chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'lines,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            out.push((name.clone(), n + 1, m - n + 1));
                            break 'lines;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// Where `fn <name>` starts on a line of code, if it does.
fn find_fn(line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find("fn ") {
        let at = from + i;
        let before = line[..at].chars().last();
        let after = line[at + 3..].chars().next();
        if before.is_none_or(|b| b == ' ' || b == '(' || b == '\t')
            && after.is_some_and(|a| a.is_alphabetic() || a == '_')
        {
            return Some(at);
        }
        from = at + 3;
    }
    None
}

fn violations_of(rule: impl Fn(&str, &str) -> Vec<String>) -> Vec<String> {
    sources()
        .iter()
        .filter(|(p, _)| is_production(p))
        .flat_map(|(p, t)| rule(p, production_part(t)))
        .collect()
}

fn assert_none(rule: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{rule}:\n  {}", found.join("\n  "));
}

#[test]
fn sql_is_written_only_in_store() {
    const SQL: &[&str] = &[
        "SELECT ",
        "INSERT INTO ",
        "DELETE FROM ",
        "CREATE TABLE",
        "CREATE INDEX",
        "ALTER TABLE",
        "TRUNCATE ",
        "COPY ",
    ];
    let found = violations_of(|path, text| {
        if path.starts_with("store/") || path.starts_with("migrations/") {
            return Vec::new();
        }
        lex(text)
            .literals
            .into_iter()
            .filter(|(_, s)| {
                SQL.iter().any(|k| s.trim_start().starts_with(k))
                    || (s.contains("UPDATE ") && s.contains(" SET "))
            })
            .map(|(line, s)| format!("{path}:{line}: {}", s.chars().take(60).collect::<String>()))
            .collect()
    });
    assert_none(
        "SQL outside store/ (add a function to quizflow-store)",
        found,
    );
}

#[test]
fn subjects_and_stream_names_are_spelled_only_in_nats() {
    const NAMES: &[&str] = &[
        "SUBMISSIONS",
        "DELIVERIES",
        "DEAD_LETTERS",
        "SUBMISSION_IDS",
        "RESPONDENT_LIMITS",
        "quizflow_workers",
    ];
    const PREFIXES: &[&str] = &["quiz.submissions", "deliveries.", "dead.", "quizflow."];
    let found = violations_of(|path, text| {
        if path.starts_with("nats/") {
            return Vec::new();
        }
        lex(text)
            .literals
            .into_iter()
            .filter(|(_, s)| {
                NAMES.contains(&s.as_str()) || PREFIXES.iter().any(|p| s.starts_with(p))
            })
            .map(|(line, s)| format!("{path}:{line}: {s:?}"))
            .collect()
    });
    assert_none(
        "subject or stream name outside nats/ (use quizflow_nats::subjects)",
        found,
    );
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let found: Vec<String> = sources()
        .into_iter()
        .filter(|(p, _)| p.contains("/src/"))
        .filter(|(_, t)| !t.trim_start().starts_with("//!"))
        .map(|(p, _)| p)
        .collect();
    assert_none("source files without a //! doc", found);
}

#[test]
fn every_code_path_the_docs_name_exists() {
    let mut found = Vec::new();
    for doc in ["README.md", "ARCHITECTURE.md", "docs/contract.md"] {
        let text = std::fs::read_to_string(root().join(doc)).expect("read a document");
        for (n, line) in text.lines().enumerate() {
            for quoted in line.split('`').skip(1).step_by(2) {
                let path = quoted.trim_end_matches('/');
                let looks_like_path = path.contains('/')
                    && !path.contains(' ')
                    && !path.contains("://")
                    && !path.starts_with('/')
                    && !path.contains(['{', '<', '*', '$'])
                    && (path.ends_with(".rs")
                        || path.ends_with(".md")
                        || path.ends_with(".sql")
                        || path.ends_with(".sh")
                        || path.ends_with(".yaml")
                        || path.ends_with(".yml")
                        || path.ends_with("/src")
                        || path
                            .split('/')
                            .next()
                            .is_some_and(|top| root().join(top).is_dir()));
                if looks_like_path && !root().join(path).exists() {
                    found.push(format!("{doc}:{}: `{path}`", n + 1));
                }
            }
        }
    }
    assert_none("paths named in the docs that do not exist", found);
}

#[test]
fn files_and_functions_stay_small() {
    let mut over: Vec<(String, usize)> = Vec::new();
    for (path, text) in sources().iter().filter(|(p, _)| is_production(p)) {
        let part = production_part(text);
        let lines = part.lines().count();
        if lines > MAX_FILE_LINES {
            over.push((path.clone(), lines));
        }
        for (name, first, len) in functions(&lex(part)) {
            if len > MAX_FN_LINES {
                over.push((format!("{path}:{first} fn {name}"), len));
            }
        }
    }
    let key = |s: &str| {
        s.split(':').next().unwrap_or(s).to_owned()
            + s.split(" fn ")
                .nth(1)
                .map(|n| format!(" fn {n}"))
                .unwrap_or_default()
                .as_str()
    };
    let mut found = Vec::new();
    for (what, len) in &over {
        match DEBTS.iter().find(|(d, _)| *d == key(what)) {
            Some((_, allowed)) if len <= allowed => {}
            Some((_, allowed)) => found.push(format!(
                "{what}: {len} lines, more than its debt of {allowed}"
            )),
            None => found.push(format!("{what}: {len} lines")),
        }
    }
    for (debt, _) in DEBTS {
        if !over.iter().any(|(w, _)| key(w) == *debt) {
            found.push(format!(
                "{debt}: no longer over the limit; remove it from DEBTS"
            ));
        }
    }
    assert_none(
        &format!("over {MAX_FILE_LINES} lines a file or {MAX_FN_LINES} a function"),
        found,
    );
}

#[test]
fn a_test_import_does_not_end_the_production_part() {
    let text = "use a;\n#[cfg(test)]\nuse b;\nfn c() {}\n#[cfg(test)]\n#[allow(x)]\nmod tests {}\n";
    assert_eq!(
        production_part(text),
        "use a;\n#[cfg(test)]\nuse b;\nfn c() {}"
    );
}

#[test]
fn the_lexer_sees_code_not_text() {
    let l = lex("fn a() {\n    let s = \"fn b() { {\";\n    let c = '{';\n    // fn c() {\n}\nfn d<'x>(v: &'x str) -> &'x str { v }\n");
    let f = functions(&l);
    assert_eq!(
        f,
        vec![("a".to_owned(), 1, 5), ("d".to_owned(), 6, 1)],
        "{:?}",
        l.code
    );
    assert_eq!(l.literals[0], (2, "fn b() { {".to_owned()));
}

//! pgdyno's `--log-format json` log as tests read it: each line one JSON
//! object (checked), its top-level fields as text, and waiting for a line.

use crate::harness::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The event names pgdyno's JSON log uses for clients and backends.
const EVENTS: &[&str] = &[
    "client_error",
    "client_refused",
    "login",
    "disconnect",
    "login_failed",
    "backend_connect_failed",
    "backend_error",
    "pool_saturated",
    "pool_unsaturated",
];

/// The top-level fields of a one-line JSON object: strings unescaped, other
/// values (numbers, booleans, nested objects) as their JSON text. None if
/// the line is not one JSON object.
fn json_fields(line: &str) -> Option<BTreeMap<String, String>> {
    let mut scan = Scan {
        text: line.trim(),
        at: 0,
    };
    let mut fields = BTreeMap::new();
    scan.eat(b'{')?;
    if scan.eat(b'}').is_none() {
        loop {
            let key = scan.string()?;
            scan.eat(b':')?;
            fields.insert(key, scan.value()?);
            if scan.eat(b',').is_none() {
                scan.eat(b'}')?;
                break;
            }
        }
    }
    scan.skip_space();
    (scan.at == scan.text.len()).then_some(fields)
}

struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        let mut chars = self.text[self.at..].char_indices();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => {
                    self.at += i + 1;
                    return Some(out);
                }
                '\\' => match chars.next()?.1 {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        let hex: String =
                            (0..4).filter_map(|_| chars.next()).map(|c| c.1).collect();
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
    }

    fn value(&mut self) -> Option<String> {
        self.skip_space();
        let start = self.at;
        match self.peek()? {
            b'"' => self.string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                    self.at += 1;
                    if depth == 0 {
                        return Some(self.text[start..self.at].to_owned());
                    }
                }
            }
            _ => {
                while self
                    .peek()
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.at += 1;
                }
                (self.at > start).then(|| self.text[start..self.at].to_owned())
            }
        }
    }
}

type Fields = BTreeMap<String, String>;

/// pgdyno's log so far, each line a JSON object with a level and a
/// timestamp (the test fails on any other line).
pub(super) fn json_log(pgdyno: &Pgdyno) -> Vec<Fields> {
    pgdyno
        .log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields = json_fields(line).unwrap_or_else(|| panic!("not a JSON object: {line}"));
            for key in ["level", "timestamp"] {
                assert!(fields.contains_key(key), "no {key:?} in {line}");
            }
            fields
        })
        .collect()
}

/// Waits up to 5 s for a log line that `matches`, and returns it.
pub(super) async fn logged(
    pgdyno: &Pgdyno,
    what: &str,
    matches: impl Fn(&Fields) -> bool,
) -> Fields {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = json_log(pgdyno).into_iter().find(&matches) {
            return line;
        }
        assert!(Instant::now() < deadline, "pgdyno never logged {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the log line of a client closed with SQLSTATE `code` and
/// `text` in its error, and checks it names a known event.
pub(super) async fn assert_logged_error(pgdyno: &Pgdyno, code: &str, text: &str) {
    let line = logged(pgdyno, &format!("{code} {text:?}"), |f| {
        f.get("sqlstate").map(String::as_str) == Some(code) && f.values().any(|v| v.contains(text))
    })
    .await;
    let event = line
        .get("event")
        .unwrap_or_else(|| panic!("no \"event\" in {line:?}"));
    assert!(
        EVENTS.contains(&event.as_str()),
        "unknown event in {line:?}"
    );
}

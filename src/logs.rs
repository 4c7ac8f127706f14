//! Log output: tracing-subscriber's JSON format, or pgdyno's own text format.
//!
//! The text lines read like tracing-subscriber's default ("full") format:
//!
//! ```text
//! 2026-11-27T05:08:49.963908Z  INFO client{client_addr=127.0.0.1:57472 user="bench" database="bench"}: pgdyno::client: login event="login"
//! ```
//!
//! but are written with a fraction of its work. Every client connection logs
//! a login and a disconnect, and with the default format those two lines
//! were 27k of the 153k instructions pgdyno spent per connection (callgrind,
//! `pgbench -C`): its ANSI styling runs even when colours are off, and each
//! line formats its date from scratch. Here the date and time down to the
//! second are formatted once a second per thread, colour is one escape
//! sequence around the level, and field values are written straight into
//! the line. Control characters in any value (a user name is the client's
//! to choose) are escaped, so no value can forge a line or a terminal
//! sequence.

use std::cell::Cell;
use std::fmt::{self, Write};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, LogFormat};

/// `logfile`, once opened.
static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

/// The `logfile`: lines are appended, each with one write.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl std::io::Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens `logfile` again at its path (log rotation moved the old one
/// away); the old file stays in use if that fails.
pub fn reopen() {
    let Some(log) = LOG_FILE.get() else { return };
    match open_log(&log.path) {
        Ok(file) => *log.file.lock().unwrap() = file,
        Err(e) => {
            tracing::warn!(path = %log.path.display(), error = %e, "cannot open logfile again; still writing to the old one")
        }
    }
}

/// Installs the global subscriber: `log_level` as the filter (`info` when it
/// is not a valid filter), `log_format` as the format, on stderr and, with
/// `logfile`, that file. A `logfile` that cannot be opened stops startup.
pub fn init(config: &Config) -> Result<(), String> {
    if let Some(path) = &config.logfile {
        let file =
            open_log(path).map_err(|e| format!("cannot open logfile {}: {e}", path.display()))?;
        let _ = LOG_FILE.set(LogFile {
            path: path.clone(),
            file: Mutex::new(file),
        });
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let to_file = || LOG_FILE.get().map(|f| f as &LogFile);
    let writer = std::io::stderr
        .and(move || tracing_subscriber::fmt::writer::OptionalWriter::<&LogFile>::from(to_file()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // No colour escapes in a file.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr()) && config.logfile.is_none(),
        );
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.event_format(Text).fmt_fields(Fields).init(),
    }
    Ok(())
}

/// The text line: time, level, the spans from the outermost with their
/// fields, the target, the event's fields.
pub struct Text;

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        write_time(&mut writer, now.as_secs(), now.subsec_micros())?;
        let level = level_text(*event.metadata().level(), writer.has_ansi_escapes());
        writer.write_str(level)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        writer.write_str(event.metadata().target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The fields of events and spans: the message as it is, every other field
/// as `name=value` (strings quoted), separated by spaces.
pub struct Fields;

impl<'w> FormatFields<'w> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    /// The separator and `name=` (nothing for the message), then `value`.
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .write_name(field)
                .and_then(|()| value(&mut self.writer));
        }
    }

    fn write_name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        match field.name() {
            "message" => Ok(()),
            name => {
                self.writer.write_str(name.trim_start_matches("r#"))?;
                self.writer.write_char('=')
            }
        }
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.write(field, |w| Escaped(w).write_str(value));
        }
        // Quoted as Debug quotes it; most values need no escape at all.
        let plain = value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        self.write(field, |w| {
            if !plain {
                return write!(w, "{value:?}");
            }
            w.write_char('"')?;
            w.write_str(value)?;
            w.write_char('"')
        })
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, |w| {
            write!(Escaped(w), "{value}")?;
            let mut source = value.source();
            while let Some(cause) = source {
                write!(Escaped(w), ": {cause}")?;
                source = cause.source();
            }
            Ok(())
        })
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, |w| write!(Escaped(w), "{value:?}"))
    }
}

/// Passes text on with its control characters escaped (`\n`, `\u{1b}`).
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, mut text: &str) -> fmt::Result {
        // C0 controls, DEL, and 0xC2: the lead byte of the C1 controls.
        if !text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2) {
            return self.0.write_str(text);
        }
        while let Some(at) = text.find(char::is_control) {
            self.0.write_str(&text[..at])?;
            let rest = &text[at..];
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                write!(self.0, "{}", c.escape_default())?;
            }
            text = chars.as_str();
        }
        self.0.write_str(text)
    }
}

/// The level between the time and the rest, padded as tracing-subscriber
/// pads it, coloured as it colours it when the output is a terminal.
fn level_text(level: Level, ansi: bool) -> &'static str {
    match (level, ansi) {
        (Level::ERROR, false) => " ERROR ",
        (Level::WARN, false) => "  WARN ",
        (Level::INFO, false) => "  INFO ",
        (Level::DEBUG, false) => " DEBUG ",
        (Level::TRACE, false) => " TRACE ",
        (Level::ERROR, true) => " \x1b[31mERROR\x1b[0m ",
        (Level::WARN, true) => " \x1b[33m WARN\x1b[0m ",
        (Level::INFO, true) => " \x1b[32m INFO\x1b[0m ",
        (Level::DEBUG, true) => " \x1b[34mDEBUG\x1b[0m ",
        (Level::TRACE, true) => " \x1b[35mTRACE\x1b[0m ",
    }
}

thread_local! {
    /// The last second this thread logged in, and its text
    /// (`2026-11-27T05:08:49`).
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// `2026-11-27T05:08:49.963908Z` (RFC 3339, UTC, microseconds; `micros`
/// below a million).
fn write_time(out: &mut impl Write, secs: u64, micros: u32) -> fmt::Result {
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = crate::utc::date_time(secs);
        SECOND.set((secs, text));
    }
    let mut fraction = *b".000000Z";
    let mut rest = micros;
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    // Both are ASCII digits and separators by construction.
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)?;
    out.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: u64, micros: u32) -> String {
        let mut out = String::new();
        write_time(&mut out, secs, micros).unwrap();
        out
    }

    #[test]
    fn times_are_rfc3339_utc_with_microseconds() {
        assert_eq!(time(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(time(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(time(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(time(1_700_000_000, 120_500), "2023-11-14T22:13:20.120500Z");
        assert_eq!(time(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        // The cached second is not reused for another one.
        assert_eq!(time(1_700_000_001, 1), "2023-11-14T22:13:21.000001Z");
    }

    /// A line as a subscriber with this format writes it.
    fn logged(during: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || SharedBuf(sink.clone()))
            .with_ansi(false)
            .with_max_level(Level::TRACE)
            .event_format(Text)
            .fmt_fields(Fields)
            .finish();
        tracing::subscriber::with_default(subscriber, during);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_reads_like_the_full_format() {
        let line = logged(|| {
            let span = tracing::info_span!(
                "client",
                client_addr = %"127.0.0.1:5000",
                user = tracing::field::Empty
            );
            span.record("user", "bench");
            let _entered = span.enter();
            tracing::info!(event = "login", count = 3, "login");
        });
        let (time, rest) = line.split_at(27);
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
        assert_eq!(
            rest,
            "  INFO client{client_addr=127.0.0.1:5000 user=\"bench\"}: \
             pgdyno::logs::tests: login event=\"login\" count=3\n"
        );
    }

    #[test]
    fn control_characters_in_values_are_escaped() {
        let line = logged(|| {
            let user = "evil\n2026-01-01T00:00:00.000000Z ERROR forged\x1b[31m";
            tracing::warn!(user, error = %"bad\r\nthing", "a {}", "message\nwith lines");
        });
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(!line.contains('\x1b') && !line.contains('\r'), "{line}");
        assert!(
            line.contains(" WARN pgdyno::logs::tests: a message\\nwith lines user=\"evil\\n2026"),
            "{line}"
        );
        assert!(
            line.contains("\\u{1b}[31m\" error=bad\\r\\nthing\n"),
            "{line}"
        );
        // Quotes and backslashes in a string are escaped as Debug escapes them.
        let quoted = logged(|| tracing::info!(name = r#"a"b\c"#, "q"));
        assert!(
            quoted.ends_with(&(r#" q name="a\"b\\c""#.to_owned() + "\n")),
            "{quoted}"
        );
    }
}

//! The log's two line formats, written straight into the batched buffer:
//! text for people (the text of `tracing-subscriber`'s default format) and
//! one JSON object per line (the objects of its JSON format with flattened
//! events).
//!
//! A request's log line used to go through `tracing-subscriber`'s own
//! formatter and a `request` span holding the request id: ~3 µs of CPU per
//! request, the largest cost a cheap request carried beyond its own work
//! (bench/RESULTS.md). Here a line is formatted in one pass into a
//! per-thread buffer, and the request id comes from the request's
//! task-local ([`crate::server::request_id`]) instead of a span, so no span
//! is created, entered or closed per request. The lines read as before:
//!
//! ```text
//! 2026-11-27T09:40:28.326932Z  INFO request{id=f5d4e703cb612087}: rosterd::api: request method=POST path="/api/token/refresh" status=200 ms="0.7"
//! {"timestamp":"…","level":"INFO","message":"request","method":"POST",…,"target":"rosterd::api","span":{"id":"…","name":"request"},"spans":[{"id":"…","name":"request"}]}
//! ```
//!
//! Other spans (none of ours; a dependency's at debug level) are not shown.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use super::Batched;
use crate::server::RequestId;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text for people.
    Text {
        /// Coloured, for a terminal.
        ansi: bool,
    },
    /// One JSON object per line.
    Json,
}

/// The layer that formats every enabled event into one line.
pub struct Lines {
    format: Format,
    out: Batched,
}

impl Lines {
    /// Lines in `format`, written through `out`.
    pub fn new(format: Format, out: Batched) -> Lines {
        Lines { format, out }
    }
}

thread_local! {
    static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A line longer than this does not keep its buffer on the thread.
const KEPT_BUFFER: usize = 4096;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let request = crate::server::request_id();
        let urgent = *event.metadata().level() <= Level::WARN;
        let write = |line: &mut String| {
            line.clear();
            // Writing into a String cannot fail.
            let _ = format_line(self.format, SystemTime::now(), request, event, line);
            self.out.write_line(line.as_bytes(), urgent);
        };
        // A field whose formatting logs (re-entering here) gets a buffer
        // of its own.
        let reused = BUFFER.try_with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut line) => {
                write(&mut line);
                if line.capacity() > KEPT_BUFFER {
                    *line = String::new();
                }
                true
            }
            Err(_) => false,
        });
        if reused != Ok(true) {
            write(&mut String::new());
        }
    }
}

/// Formats one event, with its newline, into `line`.
fn format_line(
    format: Format,
    now: SystemTime,
    request: Option<RequestId>,
    event: &Event<'_>,
    line: &mut String,
) -> fmt::Result {
    let meta = event.metadata();
    match format {
        Format::Text { ansi } => {
            let style = Style { ansi };
            style.dimmed(line, |line| write_timestamp(line, now))?;
            line.push(' ');
            style.paint(line, level_colour(meta.level()), |line| {
                line.push_str(level_padded(meta.level()));
                Ok(())
            })?;
            line.push(' ');
            if let Some(id) = request {
                style.paint(line, BOLD, |line| line.write_str("request"))?;
                style.paint(line, BOLD, |line| line.write_char('{'))?;
                line.push_str("id=");
                id.push_to(line);
                style.paint(line, BOLD, |line| line.write_char('}'))?;
                style.dimmed(line, |line| line.write_char(':'))?;
                line.push(' ');
            }
            style.dimmed(line, |line| line.write_str(meta.target()))?;
            style.dimmed(line, |line| line.write_char(':'))?;
            line.push(' ');
            let mut fields = TextFields {
                line,
                style,
                first: true,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
        }
        Format::Json => {
            line.push_str("{\"timestamp\":\"");
            write_timestamp(line, now)?;
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            let mut fields = JsonFields { line };
            event.record(&mut fields);
            line.push_str(",\"target\":");
            json_string(line, meta.target());
            if let Some(id) = request {
                line.push_str(",\"span\":{\"id\":\"");
                id.push_to(line);
                line.push_str("\",\"name\":\"request\"},\"spans\":[{\"id\":\"");
                id.push_to(line);
                line.push_str("\",\"name\":\"request\"}]");
            }
            line.push('}');
        }
    }
    line.push('\n');
    Ok(())
}

/// `2026-11-27T09:40:28.326932Z`: UTC, to the microsecond.
fn write_timestamp(line: &mut String, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    // Digits into one fixed buffer, pushed once: `write!` with widths, or
    // a push per digit, cost more than the rest of the line.
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    for (value, end) in [
        (year % 10_000, 4),
        (month, 7),
        (day, 10),
        (of_day / 3600, 13),
        (of_day / 60 % 60, 16),
        (of_day % 60, 19),
        (u64::from(since.subsec_micros()), 26),
    ] {
        // Each value is below 10 to the power of its field's width.
        fill_digits(&mut text[..end], value);
    }
    if year >= 10_000 {
        push_digits(line, year / 10_000, 1);
    }
    line.push_str(std::str::from_utf8(&text).unwrap_or_default());
    Ok(())
}

/// `value` in decimal, zero-padded to `width` digits (more if it needs).
fn push_digits(line: &mut String, value: u64, width: u32) {
    // u64::MAX has 20 digits.
    let mut digits = [b'0'; 20];
    let start = fill_digits(&mut digits, value);
    let start = start.min(digits.len().saturating_sub(width as usize));
    line.push_str(std::str::from_utf8(&digits[start..]).unwrap_or_default());
}

/// Writes `value`'s decimal digits at the end of `slot` (which holds
/// `'0'`s), as many as fit; returns where its first non-zero digit is
/// (`slot.len()` for 0).
fn fill_digits(slot: &mut [u8], mut value: u64) -> usize {
    let mut at = slot.len();
    while value > 0 && at > 0 {
        at -= 1;
        slot[at] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    at
}

/// The proleptic Gregorian date of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

const BOLD: &str = "1";
const DIMMED: &str = "2";
const ITALIC: &str = "3";

/// The level as the text format shows it, right-aligned in five columns.
fn level_padded(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        _ => "ERROR",
    }
}

fn level_colour(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "35",
        Level::DEBUG => "34",
        Level::INFO => "32",
        Level::WARN => "33",
        _ => "31",
    }
}

/// ANSI styling, or none.
#[derive(Clone, Copy)]
struct Style {
    ansi: bool,
}

impl Style {
    fn paint(
        self,
        line: &mut String,
        code: &str,
        text: impl FnOnce(&mut String) -> fmt::Result,
    ) -> fmt::Result {
        if self.ansi {
            write!(line, "\x1b[{code}m")?;
        }
        text(line)?;
        if self.ansi {
            line.push_str("\x1b[0m");
        }
        Ok(())
    }

    fn dimmed(
        self,
        line: &mut String,
        text: impl FnOnce(&mut String) -> fmt::Result,
    ) -> fmt::Result {
        self.paint(line, DIMMED, text)
    }
}

/// `message name=value name="text"`, as tracing-subscriber's text format.
struct TextFields<'a> {
    line: &'a mut String,
    style: Style,
    first: bool,
    result: fmt::Result,
}

impl TextFields<'_> {
    fn field(&mut self, name: &str, value: &dyn fmt::Debug) {
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if !self.first {
            self.line.push(' ');
        }
        self.first = false;
        self.result = if name == "message" {
            write!(self.line, "{value:?}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.style
                .paint(self.line, ITALIC, |line| line.write_str(name))
                .and_then(|()| self.style.dimmed(self.line, |line| line.write_char('=')))
                .and_then(|()| write!(self.line, "{value:?}"))
        };
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field.name(), &format_args!("{value}"));
        } else {
            self.field(field.name(), &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => {
                let sources = SourceList(source);
                let name = field.name();
                self.field(name, &format_args!("{value} {name}.sources={sources}"));
            }
            None => self.field(field.name(), &format_args!("{value}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field.name(), value);
    }
}

/// An error's causes: `[first, second]`.
struct SourceList<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for SourceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&format_args!("{error}"));
            next = error.source();
        }
        list.finish()
    }
}

/// `,"name":value` for each field, as tracing-serde records them.
struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        json_string(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json's spelling of a float (null when not finite).
        let text = serde_json::to_string(&value);
        self.line.push_str(text.as_deref().unwrap_or("null"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.line, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.line.push('"');
        let _ = write!(JsonEscaped(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// `text` as a JSON string.
fn json_string(line: &mut String, text: &str) {
    line.push('"');
    let _ = JsonEscaped(line).write_str(text);
    line.push('"');
}

/// Writes what it is given escaped for the inside of a JSON string.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let line = &mut *self.0;
        let mut rest = text;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            line.push_str(&rest[..at]);
            let c = rest[at..].chars().next().unwrap_or(' ');
            match c {
                '"' => line.push_str("\\\""),
                '\\' => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                '\t' => line.push_str("\\t"),
                '\u{8}' => line.push_str("\\b"),
                '\u{c}' => line.push_str("\\f"),
                c => write!(line, "\\u{:04x}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        line.push_str(rest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_the_calendar_s() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        // 2000-02-29: a leap day of a century divisible by 400.
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        assert_eq!(civil_date(20_784), (2026, 11, 27));
        // 2100 is not a leap year.
        assert_eq!(civil_date(47_540), (2100, 2, 28));
        assert_eq!(civil_date(47_541), (2100, 3, 1));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let mut line = String::new();
        let at = UNIX_EPOCH + Duration::new(1_795_772_428, 326_932_999);
        write_timestamp(&mut line, at).unwrap();
        assert_eq!(line, "2026-11-27T09:40:28.326932Z");
        line.clear();
        write_timestamp(&mut line, UNIX_EPOCH).unwrap();
        assert_eq!(line, "1970-01-01T00:00:00.000000Z");
        line.clear();
        let far = UNIX_EPOCH + Duration::new(253_402_300_800, 1_000);
        write_timestamp(&mut line, far).unwrap();
        assert_eq!(line, "10000-01-01T00:00:00.000001Z");
    }

    #[test]
    fn digits_are_zero_padded_to_their_width_and_never_cut() {
        for (value, width, text) in [
            (0, 1, "0"),
            (0, 4, "0000"),
            (7, 2, "07"),
            (2026, 4, "2026"),
            (12_345, 2, "12345"),
            (u64::MAX, 0, "18446744073709551615"),
            (u64::MAX, 25, "18446744073709551615"),
        ] {
            let mut line = String::new();
            push_digits(&mut line, value, width);
            assert_eq!(line, text, "{value} in {width}");
        }
    }

    #[test]
    fn levels_are_right_aligned_in_five_columns() {
        for level in [
            Level::TRACE,
            Level::DEBUG,
            Level::INFO,
            Level::WARN,
            Level::ERROR,
        ] {
            assert_eq!(level_padded(&level), format!("{level:>5}"));
        }
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut line = String::new();
        json_string(&mut line, "a\"b\\c\nd\u{1}é\u{1b}");
        assert_eq!(line, r#""a\"b\\c\nd\u0001é\u001b""#);
        let parsed: String = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é\u{1b}");
    }
}

//! Log output on stderr, shaped for where it goes: a terminal, a file or a log shipper, or
//! the systemd journal.
//!
//! - `text`: human-readable lines. Colour (ANSI escapes) only when stderr is a terminal, so
//!   a file or a pipe never gets escape sequences. When stderr is the journal (systemd sets
//!   `JOURNAL_STREAM` to the device and inode of that stream, and they match stderr's), the
//!   timestamp is left out: journald stamps every line itself.
//! - `json`: one object per line, for log shippers.
//! - `journald`: for `StandardError=journal`: each line starts with the syslog priority
//!   prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug/trace, sd-daemon(3)), which
//!   journald stores as the entry's `PRIORITY` (so `journalctl -p warning` works), then the
//!   text form without timestamp or colour.
//!
//! Every event is one line: a value that contains a newline (a child's error output, say) is
//! written with `\n` escaped, so one event never spreads over several journal entries.
//! The level filter comes from `ROOKERY_LOG`, else `RUST_LOG`, else `info`.

use std::fmt;
use std::io::{IsTerminal, Write};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Journald,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        })
    }
}

impl std::str::FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<LogFormat, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            "journald" => Ok(LogFormat::Journald),
            _ => Err(()),
        }
    }
}

/// Installs the global subscriber. An unreadable filter is a configuration error: the
/// one-sentence message is returned.
pub fn init(format: LogFormat) -> Result<(), String> {
    let (source, directives) = match (std::env::var("ROOKERY_LOG"), std::env::var("RUST_LOG")) {
        (Ok(v), _) if !v.trim().is_empty() => ("ROOKERY_LOG", v),
        (_, Ok(v)) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("ROOKERY_LOG", "info".to_string()),
    };
    let filter = EnvFilter::try_new(&directives).map_err(|e| {
        format!("invalid {source} \"{directives}\": expected a filter such as info or rookery=debug ({e})")
    })?;
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && format == LogFormat::Text);
    match format {
        LogFormat::Json => builder.json().with_writer(std::io::stderr).init(),
        LogFormat::Text if stderr_is_journal() => {
            builder.without_time().with_writer(OneLineStderr).init()
        }
        LogFormat::Text => builder.with_writer(OneLineStderr).init(),
        LogFormat::Journald => builder
            .event_format(JournaldPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .with_writer(OneLineStderr)
            .init(),
    }
    Ok(())
}

/// True when `JOURNAL_STREAM` names the file stderr is: systemd connected it to the journal.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => journal_stream_matches(&value, meta.dev(), meta.ino()),
        Err(_) => false,
    }
}

/// `JOURNAL_STREAM` is `<device>:<inode>` in decimal (systemd.exec(5)).
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The sd-daemon(3) priority prefix of `level`.
pub fn journald_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes each event with its priority, then formats it with the inner format.
struct JournaldPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournaldPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", journald_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Stderr, one line per event: the formatter's output for one event is collected and
/// written at once with inner line breaks escaped.
struct OneLineStderr;

impl<'a> MakeWriter<'a> for OneLineStderr {
    type Writer = OneLine;

    fn make_writer(&'a self) -> OneLine {
        OneLine(Vec::with_capacity(256))
    }
}

struct OneLine(Vec<u8>);

impl Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for OneLine {
    fn drop(&mut self) {
        let line = one_line(&self.0);
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// `event` with every line break but the last written as `\n` (or `\r`), ending in one
/// newline.
pub fn one_line(event: &[u8]) -> Vec<u8> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    let mut out = Vec::with_capacity(body.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        for (raw, format) in [
            ("text", LogFormat::Text),
            ("JSON", LogFormat::Json),
            (" journald ", LogFormat::Journald),
        ] {
            assert_eq!(raw.parse(), Ok(format));
            assert_eq!(format.to_string().parse(), Ok(format));
        }
        assert_eq!("syslog".parse::<LogFormat>(), Err(()));
    }

    #[test]
    fn an_event_is_one_line() {
        assert_eq!(one_line(b"a b\n"), b"a b\n");
        assert_eq!(
            one_line(b"pg_ctl failed: line 1\nline 2\r\n\n"),
            b"pg_ctl failed: line 1\\nline 2\\r\\n\n"
        );
        assert_eq!(one_line(b"no newline"), b"no newline\n");
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:123456", 8, 123456));
        assert!(!journal_stream_matches("8:123456", 8, 1));
        assert!(!journal_stream_matches("9:123456", 8, 123456));
        assert!(!journal_stream_matches("garbage", 8, 123456));
        assert_eq!(journald_priority(&Level::ERROR), 3);
        assert_eq!(journald_priority(&Level::WARN), 4);
        assert_eq!(journald_priority(&Level::INFO), 6);
        assert_eq!(journald_priority(&Level::DEBUG), 7);
    }
}

//! From one option's string to a typed value, or [`ConfigError`]: one sentence naming the
//! option, what was given and what was expected.
//!
//! These helpers know nothing of the subsystems; the assembly in `config` calls them with
//! the option's name, so the name in the error is always the one the operator typed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A configuration value that was rejected: which option, what was given, what was expected.
/// Its `Display` is the one sentence printed before exiting with status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{option} \"{value}\": {reason}")]
pub struct ConfigError {
    /// The option's long name without dashes, e.g. `bind`.
    pub option: &'static str,
    /// The value as given (already redacted when it may hold a secret).
    pub value: String,
    /// What was wrong, ending without a period.
    pub reason: String,
}

impl ConfigError {
    /// The error for `--option` given as `value`; `reason` says what was expected.
    pub fn new(option: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            option,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Parses `IP:port`, `[IPv6]:port` or `localhost:port`.
pub fn parse_socket_addr(option: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    let expected = "expected host:port with an IP address or localhost, e.g. 127.0.0.1:2470";
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = raw.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .map_err(|_| ConfigError::new(option, raw, expected));
    }
    Err(ConfigError::new(option, raw, expected))
}

/// Parses a humantime duration (`72h`, `30s`, `1h 30m`) that must be positive.
pub fn parse_duration(option: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(raw.trim()) {
        Ok(d) if d.is_zero() => Err(ConfigError::new(option, raw, "must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(ConfigError::new(
            option,
            raw,
            format!("expected a duration such as 30s, 15m or 72h ({e})"),
        )),
    }
}

/// Parses a whole number from `min` to `max` (inclusive).
pub fn parse_count(
    option: &'static str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match raw.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            option,
            raw,
            format!("expected a whole number from {min} to {max}"),
        )),
    }
}

/// Seqs are JSON integers on the wire: they must stay below 2^53.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Parses a relay seq: from 1 up to, but not including, [`MAX_SEQ`].
pub fn parse_seq(option: &'static str, raw: &str) -> Result<u64, ConfigError> {
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..MAX_SEQ).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            option,
            raw,
            "expected a whole number from 1 to 2^53-2",
        )),
    }
}

/// Parses `none`, a byte count, or a count with a K, M or G suffix (powers of 1024,
/// an optional trailing `B`/`iB` is accepted: `256M`, `256MiB`, `1G`).
pub fn parse_byte_size(option: &'static str, raw: &str) -> Result<Option<u64>, ConfigError> {
    let bad = || {
        ConfigError::new(
            option,
            raw,
            "expected none or a size such as 1048576, 256M or 10G",
        )
    };
    let text = raw.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let upper = text.to_ascii_uppercase();
    let unit_stripped = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match unit_stripped.char_indices().last() {
        Some((i, 'K')) => (&unit_stripped[..i], 10),
        Some((i, 'M')) => (&unit_stripped[..i], 20),
        Some((i, 'G')) => (&unit_stripped[..i], 30),
        Some((i, 'T')) => (&unit_stripped[..i], 40),
        _ => (unit_stripped, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(Some(bytes))
}

/// Parses an absolute http(s) URL with a host.
pub fn parse_http_url(option: &'static str, raw: &str) -> Result<url::Url, ConfigError> {
    let expected = "expected an http:// or https:// URL such as https://plc.directory";
    let url = url::Url::parse(raw.trim())
        .map_err(|e| ConfigError::new(option, raw, format!("{expected} ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(option, raw, expected));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("x", "none").unwrap(), None);
        assert_eq!(parse_byte_size("x", "1048576").unwrap(), Some(1 << 20));
        assert_eq!(parse_byte_size("x", "2k").unwrap(), Some(2048));
        assert_eq!(parse_byte_size("x", "3MB").unwrap(), Some(3 << 20));
        assert_eq!(parse_byte_size("x", "1TiB").unwrap(), Some(1 << 40));
        assert!(parse_byte_size("x", "99999999999999T").is_err());
        assert!(parse_byte_size("x", "M").is_err());
        assert!(parse_byte_size("x", "-1").is_err());
    }
}

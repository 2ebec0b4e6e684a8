//! Secrets and their redaction: [`Secret`] never prints its value, [`DatabaseUrl`] prints
//! its connection string with the password replaced, in both the URL and the libpq
//! key=value form.
//!
//! Why a type rather than care at each log line: a secret that cannot be printed cannot
//! leak into the configuration summary, a `Debug` dump or an error message by accident.

use std::fmt;
use std::str::FromStr;

use super::parse::ConfigError;

/// What a redacted secret prints as.
pub const REDACTED: &str = "REDACTED";

/// A secret string. Printing it (Debug or Display) shows [`REDACTED`]; use
/// [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A validated external Postgres connection string. `Display` redacts the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: Secret,
    parsed: tokio_postgres::Config,
}

impl DatabaseUrl {
    /// Parses a `postgres://`/`postgresql://` URL or a libpq key=value string.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let shown = redact_database_url(raw);
        let parsed = tokio_postgres::Config::from_str(raw).map_err(|e| {
            ConfigError::new(
                "database-url",
                shown.clone(),
                format!("expected a postgres:// URL or key=value connection string ({e})"),
            )
        })?;
        if parsed.get_hosts().is_empty() {
            return Err(ConfigError::new(
                "database-url",
                shown,
                "no host given (use host=/path for a unix socket)",
            ));
        }
        Ok(DatabaseUrl {
            raw: Secret::new(raw),
            parsed,
        })
    }

    /// The parsed connection settings (password included).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.parsed
    }

    /// The original string, password included.
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_database_url(self.raw.expose()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Replaces the password in a Postgres connection string with [`REDACTED`], in both the URL
/// form (userinfo and `?password=`) and the key=value form. A string that cannot be read at
/// all is replaced entirely, since we cannot tell where its password is.
pub fn redact_database_url(raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Ok(mut url) = url::Url::parse(trimmed) else {
            return REDACTED.to_string();
        };
        if url.password().is_some() && url.set_password(Some(REDACTED)).is_err() {
            return REDACTED.to_string();
        }
        if url.query_pairs().any(|(k, _)| k == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    if k == "password" {
                        (k.into_owned(), REDACTED.to_string())
                    } else {
                        (k.into_owned(), v.into_owned())
                    }
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return url.to_string();
    }
    redact_key_value(trimmed).unwrap_or_else(|| REDACTED.to_string())
}

/// Redacts `password=...` in a libpq key=value string, following its quoting rules
/// (values may be single-quoted with backslash escapes). `None` when the string is malformed.
fn redact_key_value(raw: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut chars = raw.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.push(chars.next()?);
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        if key == "password" {
            out.push(format!("password={REDACTED}"));
        } else if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '\'') {
            out.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        } else {
            out.push(format!("{key}={value}"));
        }
    }
    Some(out.join(" "))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        let shown = redact_database_url("postgres://alice:s3cret@db.example:5432/rookery");
        assert_eq!(
            shown,
            format!("postgres://alice:{REDACTED}@db.example:5432/rookery")
        );
        let shown =
            redact_database_url("postgresql://alice@db/rookery?password=s3cret&sslmode=disable");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");
        let shown = redact_database_url("postgres://alice@db/rookery");
        assert_eq!(shown, "postgres://alice@db/rookery");
    }

    #[test]
    fn key_value_passwords_are_redacted() {
        let shown = redact_database_url("host=/tmp user=postgres password='it''s s3cret' dbname=x");
        // A malformed quoted value is fully redacted rather than half-printed.
        assert!(!shown.contains("s3cret"), "{shown}");
        let shown = redact_database_url("host=/tmp password=s3cret dbname=x");
        assert_eq!(shown, format!("host=/tmp password={REDACTED} dbname=x"));
        let shown = redact_database_url("host=/tmp password='s3 cret' dbname='my db'");
        assert_eq!(
            shown,
            format!("host=/tmp password={REDACTED} dbname='my db'")
        );
        assert_eq!(redact_database_url("password='unterminated"), REDACTED);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn passwords_never_survive_redaction(
                password in "[A-Za-z0-9]{12,24}",
                user in "[a-z]{1,8}",
                host in "[a-z]{1,8}",
            ) {
                let url = format!("postgres://{user}:{password}@{host}/db");
                prop_assert!(!redact_database_url(&url).contains(&password));
                let kv = format!("host={host} user={user} password={password} dbname=db");
                prop_assert!(!redact_database_url(&kv).contains(&password));
                let quoted = format!("host={host} password='{password} x' dbname=db");
                prop_assert!(!redact_database_url(&quoted).contains(&password));
            }
        }
    }
}

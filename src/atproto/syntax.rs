//! Syntax validators for the atproto string formats a relay touches: DID, handle, NSID,
//! record key, repo path, TID, datetime and CID strings.
//!
//! Every validator is a hand-written byte scanner rather than a regex: the inputs are
//! untrusted and short, a scanner runs in one pass without allocating, and it lets each
//! rejection carry a precise, static reason that can be used as a metric label. The rules
//! follow the atproto specs as summarised in PROTOCOL.md §0 and are checked line by line
//! against the interop test vectors (`tests/atproto/syntax.rs`).

/// A string that does not match one of the atproto syntaxes. The `&'static str` is a short
/// human description of the problem; [`SyntaxError::reason`] is the stable metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("invalid DID: {0}")]
    Did(&'static str),
    #[error("invalid handle: {0}")]
    Handle(&'static str),
    #[error("invalid NSID: {0}")]
    Nsid(&'static str),
    #[error("invalid record key: {0}")]
    RecordKey(&'static str),
    #[error("invalid repo path: {0}")]
    RepoPath(&'static str),
    #[error("invalid TID: {0}")]
    Tid(&'static str),
    #[error("invalid datetime: {0}")]
    Datetime(&'static str),
    #[error("invalid CID string: {0}")]
    Cid(&'static str),
}

impl SyntaxError {
    /// Stable label for metrics (one per syntax kind).
    pub fn reason(&self) -> &'static str {
        match self {
            SyntaxError::Did(_) => "invalid-did",
            SyntaxError::Handle(_) => "invalid-handle",
            SyntaxError::Nsid(_) => "invalid-nsid",
            SyntaxError::RecordKey(_) => "invalid-record-key",
            SyntaxError::RepoPath(_) => "invalid-repo-path",
            SyntaxError::Tid(_) => "invalid-tid",
            SyntaxError::Datetime(_) => "invalid-datetime",
            SyntaxError::Cid(_) => "invalid-cid",
        }
    }

    /// The human description of what is wrong.
    pub fn detail(&self) -> &'static str {
        match self {
            SyntaxError::Did(d)
            | SyntaxError::Handle(d)
            | SyntaxError::Nsid(d)
            | SyntaxError::RecordKey(d)
            | SyntaxError::RepoPath(d)
            | SyntaxError::Tid(d)
            | SyntaxError::Datetime(d)
            | SyntaxError::Cid(d) => d,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DID

/// Maximum length of a DID string.
pub const MAX_DID_LEN: usize = 2048;

/// `^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$`, at most 2048 characters.
///
/// This is the generic DID syntax; it accepts any method. Whether the relay supports the
/// method (`plc`, `web`) is a separate decision.
pub fn validate_did(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::Did;
    if s.len() > MAX_DID_LEN {
        return Err(err("too long"));
    }
    let rest = s.strip_prefix("did:").ok_or(err("missing did: prefix"))?;
    let colon = rest.find(':').ok_or(err("missing method separator"))?;
    let (method, ident) = (&rest[..colon], &rest[colon + 1..]);
    if method.is_empty() {
        return Err(err("empty method"));
    }
    if !method.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(err("method must be lower-case letters"));
    }
    let last = *ident.as_bytes().last().ok_or(err("empty identifier"))?;
    if !ident
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
    {
        return Err(err("disallowed character in identifier"));
    }
    if matches!(last, b':' | b'%') {
        return Err(err("identifier ends with ':' or '%'"));
    }
    Ok(())
}

pub fn is_valid_did(s: &str) -> bool {
    validate_did(s).is_ok()
}

/// A DID an atproto *account* can have: [`validate_did`] plus the method rules. `did:plc:` is
/// followed by exactly 24 base32 characters (`a-z2-7`); `did:web:` by a hostname only (no path),
/// where a port is allowed only for `localhost` and written `%3A<port>`. Other methods
/// (including `did:key`) are refused.
pub fn validate_account_did(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::Did;
    validate_did(s)?;
    if let Some(id) = s.strip_prefix("did:plc:") {
        if id.len() != 24 || !id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
            return Err(err("did:plc identifier must be 24 base32 characters"));
        }
        return Ok(());
    }
    if let Some(host) = s.strip_prefix("did:web:") {
        let (name, port) = match host.split_once("%3A") {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        if let Some(port) = port {
            if name != "localhost" {
                return Err(err("did:web ports are only allowed for localhost"));
            }
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("did:web port must be digits"));
            }
            return Ok(());
        }
        if name == "localhost" {
            return Ok(());
        }
        return validate_handle(name).map_err(|_| err("did:web must name a hostname"));
    }
    Err(err("unsupported DID method (only plc and web)"))
}

pub fn is_valid_account_did(s: &str) -> bool {
    validate_account_did(s).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Handle

/// Maximum length of a handle.
pub const MAX_HANDLE_LEN: usize = 253;

/// A hostname of at most 253 characters with at least two labels; each label 1–63 characters
/// of `[a-zA-Z0-9-]` without a leading or trailing hyphen; the last label (TLD) must not start
/// with a digit. Case-insensitive: see [`normalize_handle`].
pub fn validate_handle(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::Handle;
    if s.len() > MAX_HANDLE_LEN {
        return Err(err("too long"));
    }
    let mut labels = 0usize;
    let mut last_label = "";
    for label in s.split('.') {
        check_hostname_label(label).map_err(err)?;
        labels += 1;
        last_label = label;
    }
    if labels < 2 {
        return Err(err("needs at least two labels"));
    }
    if !last_label.as_bytes()[0].is_ascii_alphabetic() {
        return Err(err("top-level domain must start with a letter"));
    }
    Ok(())
}

/// One DNS label: 1–63 of `[a-zA-Z0-9-]`, no hyphen at either end.
fn check_hostname_label(label: &str) -> Result<(), &'static str> {
    let bytes = label.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err("empty label");
    };
    if bytes.len() > 63 {
        return Err("label longer than 63 characters");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    {
        return Err("disallowed character in label");
    }
    if first == b'-' || last == b'-' {
        return Err("label starts or ends with a hyphen");
    }
    Ok(())
}

pub fn is_valid_handle(s: &str) -> bool {
    validate_handle(s).is_ok()
}

/// Handles are case-insensitive; the normal form is ASCII lower case.
pub fn normalize_handle(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Validates and returns the normalised (lower-case) handle.
pub fn parse_handle(s: &str) -> Result<String, SyntaxError> {
    validate_handle(s)?;
    Ok(normalize_handle(s))
}

/// Top-level domains that a *real* account handle must not use (the syntax allows them).
pub const DISALLOWED_HANDLE_TLDS: [&str; 8] = [
    "alt",
    "arpa",
    "example",
    "internal",
    "invalid",
    "local",
    "localhost",
    "onion",
];

/// True when the handle's TLD is one of [`DISALLOWED_HANDLE_TLDS`] (case-insensitive).
/// `handle.invalid` (the failed-handle sentinel) is therefore "disallowed" too.
pub fn is_disallowed_handle_tld(handle: &str) -> bool {
    let tld = handle.rsplit('.').next().unwrap_or(handle);
    DISALLOWED_HANDLE_TLDS
        .iter()
        .any(|d| d.eq_ignore_ascii_case(tld))
}

// ---------------------------------------------------------------------------------------------
// NSID

/// Maximum length of an NSID (253 for the domain authority + '.' + 63 for the name).
pub const MAX_NSID_LEN: usize = 317;

/// Reversed domain authority plus a name: at least three dot-separated segments; the
/// authority segments are hostname labels (the first must start with a letter); the final
/// name segment is 1–63 ASCII letters and digits starting with a letter (no hyphens).
pub fn validate_nsid(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::Nsid;
    if s.len() > MAX_NSID_LEN {
        return Err(err("too long"));
    }
    let (authority, name) = s
        .rsplit_once('.')
        .ok_or(err("needs at least three segments"))?;
    let mut segments = 0usize;
    for (i, label) in authority.split('.').enumerate() {
        check_hostname_label(label).map_err(err)?;
        if i == 0 && !label.as_bytes()[0].is_ascii_alphabetic() {
            return Err(err("first segment must start with a letter"));
        }
        segments += 1;
    }
    if segments < 2 {
        return Err(err("needs at least three segments"));
    }
    let name_bytes = name.as_bytes();
    let first = *name_bytes.first().ok_or(err("empty name segment"))?;
    if name_bytes.len() > 63 {
        return Err(err("name segment longer than 63 characters"));
    }
    if !first.is_ascii_alphabetic() {
        return Err(err("name segment must start with a letter"));
    }
    if !name_bytes.iter().all(|b| b.is_ascii_alphanumeric()) {
        return Err(err("name segment must be letters and digits"));
    }
    Ok(())
}

pub fn is_valid_nsid(s: &str) -> bool {
    validate_nsid(s).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Record key and repo path

/// Maximum length of a record key.
pub const MAX_RECORD_KEY_LEN: usize = 512;

/// 1–512 characters of `[A-Za-z0-9._:~-]`, and not `.` or `..`.
pub fn validate_record_key(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::RecordKey;
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.len() > MAX_RECORD_KEY_LEN {
        return Err(err("too long"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-'))
    {
        return Err(err("disallowed character"));
    }
    if s == "." || s == ".." {
        return Err(err("'.' and '..' are not record keys"));
    }
    Ok(())
}

pub fn is_valid_record_key(s: &str) -> bool {
    validate_record_key(s).is_ok()
}

/// `<nsid>/<record-key>`: exactly one `/`, a valid collection NSID and a valid record key.
pub fn validate_repo_path(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::RepoPath;
    let (collection, rkey) = s.split_once('/').ok_or(err("missing '/'"))?;
    if rkey.contains('/') {
        return Err(err("more than one '/'"));
    }
    validate_nsid(collection).map_err(|e| err(e.detail()))?;
    validate_record_key(rkey).map_err(|e| err(e.detail()))?;
    Ok(())
}

pub fn is_valid_repo_path(s: &str) -> bool {
    validate_repo_path(s).is_ok()
}

// ---------------------------------------------------------------------------------------------
// TID

/// The base32-sortable alphabet TIDs are written in.
pub const TID_ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// `^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$` (the first character can
/// only encode values 0–15, which keeps the 65-bit string within a 64-bit value).
pub fn validate_tid(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::Tid;
    let bytes = s.as_bytes();
    if bytes.len() != 13 {
        return Err(err("must be 13 characters"));
    }
    if !bytes.iter().all(|b| matches!(b, b'2'..=b'7' | b'a'..=b'z')) {
        return Err(err("character outside the base32-sortable alphabet"));
    }
    if !matches!(bytes[0], b'2'..=b'7' | b'a'..=b'j') {
        return Err(err("value does not fit in 64 bits"));
    }
    Ok(())
}

pub fn is_valid_tid(s: &str) -> bool {
    validate_tid(s).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Datetime

/// Maximum length of a datetime string.
pub const MAX_DATETIME_LEN: usize = 64;

/// RFC 3339 as atproto restricts it: `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z` or
/// `±HH:MM` (upper-case `T` and `Z`; `-00:00` is not allowed; 1–20 fraction digits), and the
/// value must be a real instant (month 1–12, day within the month, hour ≤ 23, minute and
/// second ≤ 59) that is not before year 0 once the offset is applied.
pub fn validate_datetime(s: &str) -> Result<(), SyntaxError> {
    parse_datetime_micros(s).map(|_| ())
}

pub fn is_valid_datetime(s: &str) -> bool {
    validate_datetime(s).is_ok()
}

fn digits(bytes: &[u8], start: usize, len: usize) -> Result<u32, SyntaxError> {
    let field = bytes
        .get(start..start + len)
        .ok_or(SyntaxError::Datetime("truncated"))?;
    let mut value = 0u32;
    for b in field {
        if !b.is_ascii_digit() {
            return Err(SyntaxError::Datetime("expected a digit"));
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Ok(value)
}

fn expect_byte(bytes: &[u8], at: usize, want: u8) -> Result<(), SyntaxError> {
    if bytes.get(at) == Some(&want) {
        Ok(())
    } else {
        Err(SyntaxError::Datetime("unexpected separator"))
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap_year(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Validates a datetime (see [`validate_datetime`]) and returns it as microseconds since the
/// UNIX epoch (fraction digits past the sixth are truncated).
pub fn parse_datetime_micros(s: &str) -> Result<i64, SyntaxError> {
    let err = SyntaxError::Datetime;
    let b = s.as_bytes();
    if b.len() > MAX_DATETIME_LEN {
        return Err(err("too long"));
    }
    let year = digits(b, 0, 4)?;
    expect_byte(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    expect_byte(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    expect_byte(b, 10, b'T')?;
    let hour = digits(b, 11, 2)?;
    expect_byte(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    expect_byte(b, 16, b':')?;
    let second = digits(b, 17, 2)?;
    let mut pos = 19;
    let mut micros_fraction = 0u32;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            if pos - start < 6 {
                micros_fraction = micros_fraction * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let count = pos - start;
        if count == 0 {
            return Err(err("empty fraction"));
        }
        if count > 20 {
            return Err(err("fraction longer than 20 digits"));
        }
        for _ in count..6 {
            micros_fraction *= 10;
        }
    }
    let offset_minutes: i64 = match b.get(pos) {
        Some(b'Z') => {
            pos += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, pos + 1, 2)?;
            expect_byte(b, pos + 3, b':')?;
            let om = digits(b, pos + 4, 2)?;
            pos += 6;
            if oh > 23 || om > 59 {
                return Err(err("timezone offset out of range"));
            }
            let total = i64::from(oh * 60 + om);
            if sign == b'-' {
                if total == 0 {
                    return Err(err("'-00:00' offset is not allowed"));
                }
                -total
            } else {
                total
            }
        }
        _ => return Err(err("missing timezone")),
    };
    if pos != b.len() {
        return Err(err("trailing characters"));
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month) {
        return Err(err("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(err("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(err("time of day out of range"));
    }
    let local_seconds =
        days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let utc_seconds = local_seconds - offset_minutes * 60;
    if utc_seconds < days_from_civil(0, 1, 1) * 86_400 {
        return Err(err("before year 0 once normalised to UTC"));
    }
    Ok(utc_seconds * 1_000_000 + i64::from(micros_fraction))
}

// ---------------------------------------------------------------------------------------------
// CID string

/// CID string *syntax* as atproto defines it: 8–256 characters of `[a-zA-Z0-9+=]` and not a
/// CIDv0 (`Qm…`). Like the reference validators this is a syntax check only: the interop
/// vectors list contrived strings (base8/base64 multibase, truncated multihashes) as *valid
/// syntax* that no CID decoder accepts. Use [`parse_cid_string`] to get a decoded [`Cid`], or
/// `cid::parse_blessed_cid_str` where only the blessed form is allowed.
///
/// [`Cid`]: super::cid::Cid
pub fn validate_cid_str(s: &str) -> Result<(), SyntaxError> {
    let err = SyntaxError::Cid;
    if s.len() < 8 || s.len() > 256 {
        return Err(err("length must be 8 to 256 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'=')
    {
        return Err(err("disallowed character"));
    }
    if s.starts_with("Qm") {
        return Err(err("CIDv0 is not allowed"));
    }
    Ok(())
}

/// [`validate_cid_str`] plus a real decode (delegated to `cid::parse_cid_str`); CIDv0 is
/// rejected. Any codec and hash are accepted: records may embed unusual CIDs.
pub fn parse_cid_string(s: &str) -> Result<super::cid::Cid, SyntaxError> {
    validate_cid_str(s)?;
    let cid =
        super::cid::parse_cid_str(s).map_err(|_| SyntaxError::Cid("does not decode as a CID"))?;
    if cid.version() != ::cid::Version::V1 {
        return Err(SyntaxError::Cid("CIDv0 is not allowed"));
    }
    Ok(cid)
}

pub fn is_valid_cid_str(s: &str) -> bool {
    validate_cid_str(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_dids() {
        assert!(is_valid_account_did("did:plc:7iza6de2dwap2sbkpav7c6c6"));
        assert!(is_valid_account_did("did:web:example.com"));
        assert!(is_valid_account_did("did:web:localhost%3A1234"));
        assert!(is_valid_account_did("did:web:localhost"));
        assert!(!is_valid_account_did("did:plc:7iza6de2dwap2sbkpav7c6c"));
        assert!(!is_valid_account_did("did:plc:7iza6de2dwap2sbkpav7c6c1"));
        assert!(!is_valid_account_did("did:plc:7IZA6DE2DWAP2SBKPAV7C6C6"));
        assert!(!is_valid_account_did("did:web:example.com%3A443"));
        assert!(!is_valid_account_did("did:web:example.com:path"));
        assert!(!is_valid_account_did("did:web:localhost%3Ax"));
        assert!(!is_valid_account_did(
            "did:key:zQ3shZc2QzApp2oymGvQbzP8eKheVshBHbU4ZYjeXqwSKEn6N"
        ));
        assert!(!is_valid_account_did("did:method:val"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn validators_never_panic(s in "\\PC{0,80}") {
            let _ = validate_did(&s);
            let _ = validate_account_did(&s);
            let _ = validate_handle(&s);
            let _ = validate_nsid(&s);
            let _ = validate_record_key(&s);
            let _ = validate_repo_path(&s);
            let _ = validate_tid(&s);
            let _ = parse_datetime_micros(&s);
            let _ = validate_cid_str(&s);
            let _ = parse_cid_string(&s);
            let _ = is_disallowed_handle_tld(&s);
        }

        #[test]
        fn structured_inputs_never_panic(
            s in "(did:[a-z]{1,4}:|at://|[a-z0-9.:/_%-]{0,5})[a-zA-Z0-9.:/_%~+=-]{0,40}",
            dt in "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,25})?(Z|[+-][0-9]{2}:[0-9]{2}|[+-]?)",
        ) {
            let _ = validate_did(&s);
            let _ = validate_account_did(&s);
            let _ = validate_handle(&s);
            let _ = validate_nsid(&s);
            let _ = validate_repo_path(&s);
            let _ = validate_cid_str(&s);
            if let Ok(micros) = parse_datetime_micros(&dt) {
                proptest::prop_assert!(micros >= days_from_civil(0, 1, 1) * 86_400_000_000);
            }
        }

        #[test]
        fn valid_handles_normalise_to_valid_handles(s in "[a-zA-Z0-9-]{1,20}\\.[a-zA-Z][a-zA-Z0-9-]{0,10}") {
            if is_valid_handle(&s) {
                let normal = normalize_handle(&s);
                proptest::prop_assert!(is_valid_handle(&normal));
                proptest::prop_assert_eq!(normal.clone(), normalize_handle(&normal));
            }
        }
    }

    #[test]
    fn datetime_micros() {
        assert_eq!(parse_datetime_micros("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_datetime_micros("2023-06-30T15:03:01.887007Z"),
            Ok(1_688_137_381_887_007)
        );
        assert_eq!(
            parse_datetime_micros("2023-06-30T17:03:01.8870079999+02:00"),
            Ok(1_688_137_381_887_007)
        );
        assert!(is_valid_datetime("2024-02-29T00:00:00Z"));
        assert!(!is_valid_datetime("2023-02-29T00:00:00Z"));
        assert!(is_valid_datetime("0000-01-01T00:00:00-01:00"));
    }

    #[test]
    fn cid_strings_decode() {
        let s = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
        assert_eq!(parse_cid_string(s).map(|c| c.to_string()).as_deref(), Ok(s));
        // Valid syntax per the vectors, but not a decodable CID.
        assert!(is_valid_cid_str("mBcDxtdWx0aWhhc2g+"));
        assert!(parse_cid_string("mBcDxtdWx0aWhhc2g+").is_err());
        assert!(parse_cid_string("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n").is_err());
    }

    #[test]
    fn repo_paths() {
        assert!(is_valid_repo_path("app.bsky.feed.post/3jzfcijpj2z2a"));
        assert!(is_valid_repo_path("app.bsky.actor.profile/self"));
        assert!(!is_valid_repo_path("app.bsky.feed.post"));
        assert!(!is_valid_repo_path("app.bsky.feed.post/a/b"));
        assert!(!is_valid_repo_path("app.bsky.feed.post/.."));
        assert!(!is_valid_repo_path("bsky.post/abc"));
        assert!(!is_valid_repo_path("/abc"));
        assert_eq!(
            validate_repo_path("x").map_err(|e| e.reason()),
            Err("invalid-repo-path")
        );
    }

    #[test]
    fn handle_normalisation_and_tlds() {
        assert_eq!(parse_handle("John.Test").as_deref(), Ok("john.test"));
        assert!(is_disallowed_handle_tld("handle.invalid"));
        assert!(is_disallowed_handle_tld("laptop.LOCAL"));
        assert!(!is_disallowed_handle_tld("john.test"));
        assert!(!is_disallowed_handle_tld("bsky.social"));
    }
}

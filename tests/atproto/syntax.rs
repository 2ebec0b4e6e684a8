//! The interop syntax vectors, line by line: every `*_valid.txt` line must pass its validator,
//! every `*_invalid.txt` line must fail it. Lines are NOT trimmed: leading and trailing
//! whitespace in the invalid files is part of the test. `#` lines and empty lines are comments.

use rookery::atproto::syntax::{
    SyntaxError, validate_cid_str, validate_datetime, validate_did, validate_handle, validate_nsid,
    validate_record_key, validate_tid,
};
use rookery::atproto::tid::Tid;

use crate::common::vectors::read_text;

fn vector_lines(file: &str) -> Vec<String> {
    let path = format!("interop/syntax/{file}");
    let text = read_text(&path);
    let lines: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "{path} holds no cases");
    lines
}

fn check(kind: &str, validate: fn(&str) -> Result<(), SyntaxError>) -> usize {
    let mut failures = Vec::new();
    let valid = vector_lines(&format!("{kind}_syntax_valid.txt"));
    for line in &valid {
        if let Err(e) = validate(line) {
            failures.push(format!("valid {kind} rejected: {line:?}: {e}"));
        }
    }
    let invalid = vector_lines(&format!("{kind}_syntax_invalid.txt"));
    for line in &invalid {
        if validate(line).is_ok() {
            failures.push(format!("invalid {kind} accepted: {line:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    valid.len() + invalid.len()
}

#[test]
fn did_vectors() {
    assert!(check("did", validate_did) > 40);
}

#[test]
fn handle_vectors() {
    assert!(check("handle", validate_handle) > 100);
}

#[test]
fn nsid_vectors() {
    assert!(check("nsid", validate_nsid) > 40);
}

#[test]
fn recordkey_vectors() {
    assert!(check("recordkey", validate_record_key) > 25);
}

#[test]
fn tid_vectors() {
    assert!(check("tid", validate_tid) > 10);
    // Tid::parse must agree with the syntax validator on every line.
    for line in vector_lines("tid_syntax_valid.txt") {
        let tid = Tid::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(tid.to_string(), line);
    }
    for line in vector_lines("tid_syntax_invalid.txt") {
        assert!(Tid::parse(&line).is_err(), "Tid::parse accepted {line:?}");
    }
}

#[test]
fn datetime_vectors() {
    assert!(check("datetime", validate_datetime) > 60);
}

#[test]
fn datetime_parse_invalid_vectors() {
    let lines = vector_lines("datetime_parse_invalid.txt");
    assert!(lines.len() >= 7);
    for line in lines {
        assert!(validate_datetime(&line).is_err(), "accepted {line:?}");
    }
}

#[test]
fn cid_vectors() {
    assert!(check("cid", validate_cid_str) > 15);
}

//! TIDs ("timestamp identifiers"): repo revisions (`rev`) and many record keys.
//!
//! A TID is kept as its 64-bit value rather than as a string: the base32-sortable encoding
//! preserves order, so comparing values is the same as comparing the strings the spec talks
//! about, and a `u64` is `Copy`, 8 bytes, and cheap to store per account. Layout: top bit 0,
//! 53 bits of microseconds since the UNIX epoch, 10 bits of clock id.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::syntax::{TID_ALPHABET, validate_tid};

/// How far in the future a `rev` may be before it is rejected (clock skew allowance).
pub const FUTURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const MICROS_BITS: u32 = 53;
const CLOCK_ID_BITS: u32 = 10;
const MICROS_MASK: u64 = (1 << MICROS_BITS) - 1;
const CLOCK_ID_MASK: u64 = (1 << CLOCK_ID_BITS) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TidError {
    #[error("malformed TID: {0}")]
    Malformed(&'static str),
    #[error("TID timestamp is too far in the future")]
    InFuture,
}

impl TidError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TidError::Malformed(_) => "tid-malformed",
            TidError::InFuture => "tid-in-future",
        }
    }
}

/// A timestamp identifier. Ordering is the ordering of the string forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tid(u64);

impl Tid {
    /// Parses the 13-character base32-sortable form.
    pub fn parse(s: &str) -> Result<Tid, TidError> {
        validate_tid(s).map_err(|e| TidError::Malformed(e.detail()))?;
        let mut value = 0u64;
        for b in s.bytes() {
            // validate_tid guarantees every byte is in the alphabet.
            let digit = match b {
                b'2'..=b'7' => b - b'2',
                _ => b - b'a' + 6,
            };
            value = (value << 5) | u64::from(digit);
        }
        Ok(Tid(value))
    }

    /// Builds a TID from its raw value. The spec says the top bit is 0, but the syntax
    /// (first character up to `j`) admits it, so every `u64` is representable and parsing
    /// agrees with [`validate_tid`].
    pub fn from_u64(value: u64) -> Tid {
        Tid(value)
    }

    /// Builds a TID from a timestamp (µs since the UNIX epoch, truncated to 53 bits) and a
    /// clock id (truncated to 10 bits).
    pub fn from_parts(micros: u64, clock_id: u16) -> Tid {
        Tid(((micros & MICROS_MASK) << CLOCK_ID_BITS) | (u64::from(clock_id) & CLOCK_ID_MASK))
    }

    pub fn as_u64(&self) -> u64 {
        self.0
    }

    /// Microseconds since the UNIX epoch.
    pub fn timestamp_micros(&self) -> u64 {
        self.0 >> CLOCK_ID_BITS
    }

    /// The low 10 bits.
    pub fn clock_id(&self) -> u16 {
        // Masked to 10 bits, so the cast is lossless.
        (self.0 & CLOCK_ID_MASK) as u16
    }

    /// Rejects a TID whose timestamp is more than [`FUTURE_TOLERANCE`] after `now_micros`.
    pub fn check_not_future(&self, now_micros: u64) -> Result<(), TidError> {
        self.check_not_future_within(now_micros, FUTURE_TOLERANCE)
    }

    /// Rejects a TID whose timestamp is more than `tolerance` after `now_micros`.
    pub fn check_not_future_within(
        &self,
        now_micros: u64,
        tolerance: Duration,
    ) -> Result<(), TidError> {
        let tolerance_micros = u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX);
        if self.timestamp_micros() > now_micros.saturating_add(tolerance_micros) {
            Err(TidError::InFuture)
        } else {
            Ok(())
        }
    }

    /// A fresh TID from the system clock, strictly greater than every TID this process has
    /// produced before (if the clock stalls or steps back, the previous value plus one is
    /// used). The clock id is random per process. Meant for tests and the simulator.
    pub fn now() -> Tid {
        static LAST: AtomicU64 = AtomicU64::new(0);
        static CLOCK_ID: AtomicU64 = AtomicU64::new(u64::MAX);
        let clock_id = match CLOCK_ID.load(Ordering::Relaxed) {
            u64::MAX => {
                let fresh = rand::random::<u64>() & CLOCK_ID_MASK;
                match CLOCK_ID.compare_exchange(
                    u64::MAX,
                    fresh,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => fresh,
                    Err(existing) => existing,
                }
            }
            id => id,
        };
        let candidate = Tid::from_parts(now_micros(), clock_id as u16).0;
        let mut last = LAST.load(Ordering::Relaxed);
        loop {
            let next = candidate.max(last.saturating_add(1));
            match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Tid(next),
                Err(actual) => last = actual,
            }
        }
    }
}

/// Microseconds since the UNIX epoch from the system clock (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 13];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (12 - i);
            *slot = TID_ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        // Every byte comes from the ASCII alphabet.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Tid {
    type Err = TidError;
    fn from_str(s: &str) -> Result<Tid, TidError> {
        Tid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_example() {
        let tid = Tid::parse("3jzfcijpj2z2a").unwrap();
        assert_eq!(tid.clock_id(), 6);
        // 2023-06-30T15:03:01.887007Z
        assert_eq!(tid.timestamp_micros(), 1_688_137_381_887_007);
        assert_eq!(
            crate::atproto::syntax::parse_datetime_micros("2023-06-30T15:03:01.887007Z"),
            Ok(tid.timestamp_micros() as i64)
        );
        assert_eq!(Tid::from_parts(1_688_137_381_887_007, 6), tid);
        assert_eq!(tid.to_string(), "3jzfcijpj2z2a");
        assert_eq!(Tid::parse("2222222222222").unwrap().as_u64(), 0);
        assert_eq!(Tid::from_u64(0).to_string(), "2222222222222");
        assert_eq!(Tid::from_u64(u64::MAX >> 1).to_string(), "bzzzzzzzzzzzz");
        assert_eq!(Tid::from_u64(u64::MAX).to_string(), "jzzzzzzzzzzzz");
        assert_eq!(Tid::parse("jzzzzzzzzzzzz").unwrap().as_u64(), u64::MAX);
        assert!(Tid::parse("kzzzzzzzzzzzz").is_err());
    }

    #[test]
    fn future_check() {
        let now = 1_700_000_000_000_000u64;
        let five_min = 300_000_000u64;
        assert!(Tid::from_parts(now, 0).check_not_future(now).is_ok());
        assert!(
            Tid::from_parts(now + five_min, 0)
                .check_not_future(now)
                .is_ok()
        );
        let err = Tid::from_parts(now + five_min + 1, 0)
            .check_not_future(now)
            .unwrap_err();
        assert_eq!(err.reason(), "tid-in-future");
        assert!(
            Tid::from_parts(now + 2, 0)
                .check_not_future_within(now, Duration::from_micros(1))
                .is_err()
        );
        assert!(Tid::from_parts(0, 0).check_not_future(now).is_ok());
    }

    #[test]
    fn now_is_strictly_increasing_and_current() {
        let before = now_micros();
        let mut prev = Tid::now();
        for _ in 0..1000 {
            let next = Tid::now();
            assert!(next > prev);
            prev = next;
        }
        assert!(prev.timestamp_micros() + 10_000_000 > before);
        assert!(prev.check_not_future(now_micros()).is_ok());
    }

    proptest! {
        #[test]
        fn string_order_is_value_order(a in any::<u64>(), b in any::<u64>()) {
            let (ta, tb) = (Tid::from_u64(a), Tid::from_u64(b));
            prop_assert_eq!(ta.cmp(&tb), ta.to_string().cmp(&tb.to_string()));
            prop_assert_eq!(Tid::parse(&ta.to_string()), Ok(ta));
        }

        #[test]
        fn parts_round_trip(micros in 0u64..(1 << 53), clock in 0u16..1024) {
            let tid = Tid::from_parts(micros, clock);
            prop_assert_eq!(tid.timestamp_micros(), micros);
            prop_assert_eq!(tid.clock_id(), clock);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = Tid::parse(&s);
        }

        #[test]
        fn parse_alphabetish_never_panics(s in "[2-7a-zA-Z0-9]{13}") {
            if let Ok(t) = Tid::parse(&s) {
                prop_assert_eq!(t.to_string(), s);
            }
        }
    }
}

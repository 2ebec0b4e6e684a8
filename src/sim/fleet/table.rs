//! The host table: what a fleet is made of, one JSON object per line, so benchmarks can
//! reuse a table and a person can vary one with a text editor.
//!
//! ```text
//! {"class":"large","accounts":312,"share":0.0091}
//! {"class":"tail","accounts":2,"share":0.00001,"faults":[{"fault":"dead"}]}
//! {"class":"tail","accounts":1,"share":0.00001,"faults":[{"fault":"flapping","period_ms":5000}]}
//! ```
//!
//! - `class`: `large`, `mid` or `tail` (what kind of PDS the line stands for; reports group
//!   by it).
//! - `accounts`: accounts the host holds, created when the fleet starts.
//! - `share`: the host's part of the fleet's aggregate event rate (relative weight; the
//!   generator makes them sum to 1, the loader only needs them finite and non-negative).
//! - `faults` (optional): how the host misbehaves: `{"fault":"dead"}` (refuses connections),
//!   `{"fault":"flapping","period_ms":P}` (drops its connections every P ms),
//!   `{"fault":"accept_then_drop"}` (drops every websocket right after the upgrade),
//!   `{"fault":"slow","frame_delay_ms":D}` (waits D ms before each frame it sends),
//!   `{"fault":"claims_relay"}` (its `Server` header says `atproto-relay`). Unknown fields
//!   and unknown faults are refused, so a typo never silently runs a different benchmark.
//!
//! Empty lines and lines starting with `#` are skipped. [`HostTable::generate`] draws a table
//! shaped like today's network (see its doc), deterministic for a seed.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Most hosts a table may hold (bounds what a loaded file can make the fleet start).
pub const MAX_HOSTS: usize = 20_000;
/// Most accounts one host may hold.
pub const MAX_ACCOUNTS_PER_HOST: u32 = 100_000;
/// Longest line the loader reads.
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest pause of a slow host before each frame (a longer one is a dead host).
pub const MAX_FRAME_DELAY_MS: u64 = 10_000;

/// What kind of PDS a host stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostClass {
    /// A very large host (the hundred big PDSes that carry most of the network).
    Large,
    /// A mid-size community host.
    Mid,
    /// A self-hosted PDS with a handful of accounts that post rarely.
    Tail,
}

impl HostClass {
    pub const ALL: [HostClass; 3] = [HostClass::Large, HostClass::Mid, HostClass::Tail];

    pub fn as_str(&self) -> &'static str {
        match self {
            HostClass::Large => "large",
            HostClass::Mid => "mid",
            HostClass::Tail => "tail",
        }
    }
}

/// A way a host misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The host's port refuses connections for the whole run (stopped right after start).
    Dead,
    /// The host drops every connection every `period_ms` (and keeps listening).
    Flapping { period_ms: u64 },
    /// The host accepts every websocket and drops it at once, before any frame.
    AcceptThenDrop,
    /// The host waits `frame_delay_ms` before each frame it sends.
    Slow { frame_delay_ms: u64 },
    /// The host's `Server` header says `atproto-relay`: a relay must not subscribe, and
    /// nothing it publishes may reach the relay's firehose.
    ClaimsRelay,
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub class: HostClass,
    pub accounts: u32,
    pub share: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
}

impl HostSpec {
    pub fn is_dead(&self) -> bool {
        self.faults.contains(&Fault::Dead)
    }

    /// The flapping period, if the host flaps.
    pub fn flap_period_ms(&self) -> Option<u64> {
        self.faults.iter().find_map(|f| match f {
            Fault::Flapping { period_ms } => Some(*period_ms),
            _ => None,
        })
    }

    /// The pause before each frame, if the host is slow.
    pub fn frame_delay_ms(&self) -> Option<u64> {
        self.faults.iter().find_map(|f| match f {
            Fault::Slow { frame_delay_ms } => Some(*frame_delay_ms),
            _ => None,
        })
    }

    pub fn accepts_then_drops(&self) -> bool {
        self.faults.contains(&Fault::AcceptThenDrop)
    }

    pub fn claims_relay(&self) -> bool {
        self.faults.contains(&Fault::ClaimsRelay)
    }

    /// Whether a relay can receive what the host publishes: not dead, not dropping every
    /// connection, not a relay.
    pub fn delivers(&self) -> bool {
        !self.is_dead() && !self.accepts_then_drops() && !self.claims_relay()
    }
}

/// Shares (0–1) of a table's hosts given each host fault, taken from the tail end of the
/// table ([`HostTable::add_fault`]); a share above 0 marks at least one host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostFaults {
    pub dead: f64,
    pub flapping: f64,
    pub accept_then_drop: f64,
    pub slow: f64,
    pub claims_relay: f64,
}

/// The period of the flapping hosts [`HostFaults`] marks.
pub const FLAP_PERIOD_MS: u64 = 20_000;
/// The pause before each frame of the slow hosts [`HostFaults`] marks.
pub const SLOW_FRAME_DELAY_MS: u64 = 100;

impl HostFaults {
    /// Every host fault: 1% dead, flapping and slow hosts, 0.5% that accept then drop and
    /// 0.5% that claim to be relays.
    pub fn chaos() -> HostFaults {
        HostFaults {
            dead: 0.01,
            flapping: 0.01,
            accept_then_drop: 0.005,
            slow: 0.01,
            claims_relay: 0.005,
        }
    }

    /// Marks `table`'s hosts.
    pub fn apply(&self, table: &mut HostTable) -> Result<(), String> {
        let faults = [
            (Fault::Dead, self.dead),
            (
                Fault::Flapping {
                    period_ms: FLAP_PERIOD_MS,
                },
                self.flapping,
            ),
            (Fault::AcceptThenDrop, self.accept_then_drop),
            (
                Fault::Slow {
                    frame_delay_ms: SLOW_FRAME_DELAY_MS,
                },
                self.slow,
            ),
            (Fault::ClaimsRelay, self.claims_relay),
        ];
        if faults
            .iter()
            .any(|(_, s)| !s.is_finite() || !(0.0..=1.0).contains(s))
        {
            return Err("host fault shares must be between 0 and 1".into());
        }
        let hosts = table.hosts.len() as f64;
        for (fault, share) in faults {
            if share > 0.0 {
                table.add_fault(fault, (share * hosts).ceil() as usize);
            }
        }
        Ok(())
    }
}

/// Why a table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the table has no hosts")]
    Empty,
    #[error("the table has more than {MAX_HOSTS} hosts")]
    TooManyHosts,
    #[error("reading the table: {0}")]
    Io(#[from] std::io::Error),
}

/// How many hosts of each class a generated table has, and the rate shares per class.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub large: usize,
    pub mid: usize,
    pub tail: usize,
}

impl TableShape {
    /// Today's network scaled to `hosts`: of 3,000 hosts, 100 large, 40 mid and the rest
    /// tail (at least one large host whenever `hosts > 0`).
    pub fn for_hosts(hosts: usize) -> TableShape {
        let large = (hosts * 100).div_ceil(3000).min(hosts);
        let mid = ((hosts * 40) / 3000).min(hosts - large);
        TableShape {
            large,
            mid,
            tail: hosts - large - mid,
        }
    }
}

/// Part of the aggregate event rate each class carries in a generated table.
const LARGE_SHARE: f64 = 0.85;
const MID_SHARE: f64 = 0.12;
const TAIL_SHARE: f64 = 0.03;

/// A fleet's hosts, in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTable {
    pub hosts: Vec<HostSpec>,
}

impl HostTable {
    /// A table of `hosts` hosts shaped like today's network ([`TableShape::for_hosts`]),
    /// scaled down so thousands of hosts run on one machine: large hosts hold 150–450
    /// accounts (most of the accounts) and share 85% of the events in proportion to their
    /// accounts, mid hosts 20–80 accounts and 12%, tail hosts 1–10 accounts (mostly 1–2) and
    /// 3%. The same `seed` gives the same table. No faults.
    pub fn generate(hosts: usize, seed: u64) -> HostTable {
        let shape = TableShape::for_hosts(hosts);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut specs = Vec::with_capacity(hosts);
        let classes = [
            (HostClass::Large, shape.large, LARGE_SHARE),
            (HostClass::Mid, shape.mid, MID_SHARE),
            (HostClass::Tail, shape.tail, TAIL_SHARE),
        ];
        for (class, count, class_share) in classes {
            let first = specs.len();
            for _ in 0..count {
                let accounts = match class {
                    HostClass::Large => rng.random_range(150..=450),
                    HostClass::Mid => rng.random_range(20..=80),
                    // Geometric-ish: half the tail hosts have one account.
                    HostClass::Tail => {
                        let mut n = 1;
                        while n < 10 && rng.random_bool(0.5) {
                            n += 1;
                        }
                        n
                    }
                };
                specs.push(HostSpec {
                    class,
                    accounts,
                    share: 0.0,
                    faults: Vec::new(),
                });
            }
            let class_accounts: u64 = specs[first..].iter().map(|h| u64::from(h.accounts)).sum();
            for spec in &mut specs[first..] {
                spec.share = class_share * f64::from(spec.accounts) / class_accounts as f64;
            }
        }
        // Classes missing at small sizes leave shares that sum below 1; normalise.
        let total: f64 = specs.iter().map(|h| h.share).sum();
        if total > 0.0 {
            for spec in &mut specs {
                spec.share /= total;
            }
        }
        HostTable { hosts: specs }
    }

    /// Marks `count` tail hosts (or others, when tails run out), from the end of the table,
    /// with `fault`. Hosts that already have a fault are skipped.
    pub fn add_fault(&mut self, fault: Fault, count: usize) {
        let mut left = count;
        for spec in self.hosts.iter_mut().rev() {
            if left == 0 {
                break;
            }
            if spec.faults.is_empty() {
                spec.faults.push(fault);
                left -= 1;
            }
        }
    }

    /// Hosts per class.
    pub fn count(&self, class: HostClass) -> usize {
        self.hosts.iter().filter(|h| h.class == class).count()
    }

    /// Accounts per class.
    pub fn accounts(&self, class: HostClass) -> u64 {
        self.hosts
            .iter()
            .filter(|h| h.class == class)
            .map(|h| u64::from(h.accounts))
            .sum()
    }

    /// Accounts in the whole table.
    pub fn total_accounts(&self) -> u64 {
        self.hosts.iter().map(|h| u64::from(h.accounts)).sum()
    }

    /// The file form: one JSON object per line.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for spec in &self.hosts {
            // A HostSpec always serialises (no maps with non-string keys, finite floats).
            if let Ok(line) = serde_json::to_string(spec) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Reads the file form; see the module doc. Every line is checked; the first bad one is
    /// reported with its number.
    pub fn parse(text: &str) -> Result<HostTable, TableError> {
        let mut hosts = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let bad = |reason: String| TableError::Line { line, reason };
            if raw.len() > MAX_LINE_BYTES {
                return Err(bad(format!("longer than {MAX_LINE_BYTES} bytes")));
            }
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if hosts.len() == MAX_HOSTS {
                return Err(TableError::TooManyHosts);
            }
            let spec: HostSpec =
                serde_json::from_str(trimmed).map_err(|e| bad(format!("not a host: {e}")))?;
            if spec.accounts > MAX_ACCOUNTS_PER_HOST {
                return Err(bad(format!(
                    "accounts {} is above {MAX_ACCOUNTS_PER_HOST}",
                    spec.accounts
                )));
            }
            if !spec.share.is_finite() || spec.share < 0.0 {
                return Err(bad(format!(
                    "share {} is not a finite, non-negative number",
                    spec.share
                )));
            }
            if spec.flap_period_ms() == Some(0) {
                return Err(bad("flapping period_ms must be above 0".to_string()));
            }
            if spec
                .frame_delay_ms()
                .is_some_and(|d| d > MAX_FRAME_DELAY_MS)
            {
                return Err(bad(format!(
                    "slow frame_delay_ms must be at most {MAX_FRAME_DELAY_MS}"
                )));
            }
            hosts.push(spec);
        }
        if hosts.is_empty() {
            return Err(TableError::Empty);
        }
        Ok(HostTable { hosts })
    }

    /// Reads a table file (at most [`MAX_HOSTS`] lines of [`MAX_LINE_BYTES`] are worth
    /// reading; a larger file is refused before it is read).
    pub fn load(path: &Path) -> Result<HostTable, TableError> {
        let limit = (MAX_HOSTS as u64 + 1) * MAX_LINE_BYTES as u64;
        if std::fs::metadata(path)?.len() > limit {
            return Err(TableError::TooManyHosts);
        }
        HostTable::parse(&std::fs::read_to_string(path)?)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_jsonl())
    }
}

//! Full, pure validation of `#commit` and `#sync` events (PROTOCOL.md §5, §10).
//!
//! This is the synchronous core of the ValidatorShard: given a decoded event, the account's
//! current key and the relay's stored `(rev, commit, data)` for the account, it returns a
//! verdict (accept with the new state, or drop silently as stale / duplicate) or a typed
//! [`ValidationError`] whose [`ValidationError::reason`] is the metric label. Account status
//! (takedown, deactivation, throttling), identity resolution and the per-socket `seq` check are
//! the actors' job, not this function's.
//!
//! Order of checks (why): everything that needs no cryptography runs first, cheapest first, and
//! the signature runs **last**, so
//! - stale retransmissions (`rev <= stored`, common after a reconnect) cost no signature;
//! - a [`ValidationError::Signature`] means the event is otherwise fully valid. The validator
//!   actor then re-resolves the key and calls again (PROTOCOL.md §10); garbage events never
//!   trigger an identity lookup.
//!
//! `#commit`: blocks size and op count (check 1), non-empty blocks, CAR parse, commit block at
//! `roots[0]`, `evt.commit == roots[0]` (rookery checks it, indigo does not), `roots[0]` is a
//! CIDv1 dag-cbor sha2-256 CID (else the stored commit CID would not be the event's), commit decode,
//! `evt.repo == commit.did` (the signature cannot catch a DID mismatch), `evt.rev == commit.rev`,
//! future rev (check 3), rev ordering → [`CommitVerdict::Stale`] (check 5), the size of every
//! op's record block (≤ [`MAX_RECORD_BLOCK_BYTES`], PROTOCOL.md §1), then in strict mode
//! `tooBig`/`rebase` (check 6), the `prevData` rule, `time` syntax (check 9), MST inversion
//! (check 8), and finally the signature (check 4). Chain continuity (check 7) is never an error:
//! a `prevData`/`since` mismatch with the stored state is reported as a [`Discontinuity`] on the
//! accepted verdict.
//!
//! `prevData` rule (check 6): with no stored state and no `prevData` the commit is treated as the
//! account's first and inversion is skipped. Otherwise a missing `prevData` is an error in strict
//! mode; lenient mode accepts it without inversion (pre-1.1 upstreams), checking continuity by
//! `since` only.
//!
//! Legacy ops (update/delete without `prev`, [`Sync11Outcome::Legacy`]): PROTOCOL.md §5 check 8
//! says lenient mode "also passes legacy upstreams that lack `prevData` or `prev`", so a strict
//! relay does not: [`ValidationPolicy::default`] rejects them ([`LegacyPolicy::Reject`],
//! reason `legacy-op`), [`ValidationPolicy::lenient`] accepts them and marks the verdict
//! ([`Inversion::Legacy`]) so they can be counted. A PDS that sends `prevData` implements 1.1
//! and has no excuse to leave out an op's `prev`.
//!
//! `#sync`: size (≤ 10,000 bytes, the lexicon's limit; indigo uses 2 MB), CAR, roots, decode,
//! DID and rev match, future rev, and in strict mode `time` syntax and "only the commit block";
//! then same rev and commit CID as stored → [`SyncVerdict::Duplicate`]; otherwise the signature
//! and accept. A lower rev is a rollback (the PDS restored a backup) and is accepted with
//! `rollback: true` (PROTOCOL.md §10). No continuity check.

use bytes::Bytes;

use super::car::{self, CarError, CarLimits};
use super::cid::{Cid, is_blessed_dag_cbor};
use super::commit::{Commit, CommitError};
use super::frame::{CommitEvent, SyncEvent};
use super::keys::{PublicKey, SigError};
use super::sync11::{self, CommitOp, Sync11Error, Sync11Outcome};
use super::syntax::is_valid_datetime;
use super::tid::Tid;

/// Largest `#commit.blocks` accepted (lexicon `maxLength`).
pub const MAX_COMMIT_BLOCKS_BYTES: usize = 2_000_000;
/// Most ops one `#commit` may carry (lexicon `maxLength`).
pub const MAX_COMMIT_OPS: usize = sync11::MAX_OPS;
/// Largest record block a create/update op may point to (PROTOCOL.md §1).
pub const MAX_RECORD_BLOCK_BYTES: usize = 1_000_000;
/// Largest `#sync.blocks` accepted (lexicon `maxLength`).
pub const MAX_SYNC_BLOCKS_BYTES: usize = 10_000;
/// Default clock-skew allowance for a `rev` (indigo's `futureRevTolerance`).
pub const DEFAULT_FUTURE_REV_TOLERANCE_MICROS: u64 = 5 * 60 * 1_000_000;

/// A CAR slice of a commit holds a few dozen blocks; this bounds the block map a hostile
/// 2 MB slice can make us build (every block is a map entry).
const MAX_COMMIT_CAR_BLOCKS: usize = 10_000;

/// What the relay stores per account (indigo: `account_repo.rev/commit_cid/commit_data_cid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoState {
    pub rev: Tid,
    /// CID of the latest accepted commit block.
    pub commit: Cid,
    /// MST root of that commit.
    pub data: Cid,
}

/// What to do with a commit whose ops include an update/delete without `prev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyPolicy {
    /// Accept (the verdict says [`Inversion::Legacy`], so it can be counted).
    Accept,
    /// Drop with [`ValidationError::LegacyOp`].
    Reject,
}

/// How strictly events are checked (PROTOCOL.md §5: [S] checks are strict-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationPolicy {
    /// Strict mode (default): reject deprecated `tooBig`/`rebase`, a missing `prevData` when
    /// state is stored, a bad `time`, and a `#sync` CAR with blocks besides the commit.
    pub strict: bool,
    /// How far in the future a `rev` may be.
    pub future_rev_tolerance_micros: u64,
    pub legacy: LegacyPolicy,
    /// An operator's per-host override: an MST inversion failure is reported in the verdict
    /// ([`Inversion::FailedWarnOnly`]) instead of refusing the commit. Every other check,
    /// the signature included, still applies.
    pub inversion_failure_warns: bool,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        ValidationPolicy {
            strict: true,
            future_rev_tolerance_micros: DEFAULT_FUTURE_REV_TOLERANCE_MICROS,
            legacy: LegacyPolicy::Reject,
            inversion_failure_warns: false,
        }
    }
}

impl ValidationPolicy {
    /// indigo's `RELAY_LENIENT_SYNC_VALIDATION=true`: passes legacy upstreams that lack
    /// `prevData` or op `prev`.
    pub fn lenient() -> Self {
        ValidationPolicy {
            strict: false,
            legacy: LegacyPolicy::Accept,
            ..ValidationPolicy::default()
        }
    }
}

/// How the commit's MST change was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inversion {
    /// Inverting the ops on the slice reproduced `prevData`.
    Verified,
    /// Legacy ops (no `prev`); record presence was checked, inversion was not possible.
    Legacy,
    /// No `prevData` and no stored state: the account's first commit, not inverted.
    FirstCommit,
    /// Lenient mode, no `prevData` although state is stored: not inverted.
    NoPrevData,
    /// The inversion failed and the host is set to warn-only: passed, counted.
    FailedWarnOnly,
}

impl Inversion {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Inversion::Verified => "verified",
            Inversion::Legacy => "legacy-op",
            Inversion::FirstCommit => "first-commit",
            Inversion::NoPrevData => "no-prev-data",
            Inversion::FailedWarnOnly => "failed-warn-only",
        }
    }
}

/// A chain break between the stored state and an accepted commit (PROTOCOL.md §5 check 7).
/// Passed through, counted, never a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discontinuity {
    /// `prevData` present and different from the stored `data`.
    pub prev_data_mismatch: bool,
    /// `since` absent, malformed or different from the stored `rev`.
    pub since_mismatch: bool,
}

/// Large `Accept` (two CIDs) next to an empty `Stale` is deliberate: a verdict lives for one
/// call, and boxing would cost an allocation on every accepted event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitVerdict {
    /// Emit the event and store `new_state`.
    Accept {
        new_state: RepoState,
        discontinuity: Option<Discontinuity>,
        inversion: Inversion,
    },
    /// `rev` at or below the stored rev: a retransmission, dropped silently (no signature was
    /// checked).
    Stale,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncVerdict {
    /// Emit the event and store `new_state`. `rollback` when its rev is below the stored one.
    Accept {
        new_state: RepoState,
        rollback: bool,
    },
    /// Same rev and commit CID as stored: dropped (no signature was checked).
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("blocks larger than the limit")]
    TooLarge,
    #[error("more than {MAX_COMMIT_OPS} ops")]
    TooManyOps,
    #[error("a record block is larger than {MAX_RECORD_BLOCK_BYTES} bytes")]
    RecordTooLarge,
    #[error("event has empty blocks")]
    EmptyBlocks,
    #[error("bad CAR: {0}")]
    Car(CarError),
    #[error("CAR lacks the block of roots[0]")]
    MissingCommitBlock,
    #[error("event commit CID differs from the CAR root")]
    CommitRootMismatch,
    #[error("commit CID is not CIDv1 dag-cbor sha2-256")]
    CommitCidNotBlessed,
    #[error("bad commit: {0}")]
    Commit(CommitError),
    #[error("commit did differs from the event's account")]
    RepoMismatch,
    #[error("event rev differs from the commit's rev")]
    RevMismatch,
    #[error("rev is too far in the future")]
    FutureRev,
    #[error("deprecated field set: {0}")]
    DeprecatedField(&'static str),
    #[error("prevData missing although the account has stored state")]
    MissingPrevData,
    #[error("time is not a valid datetime")]
    BadTime,
    #[error("#sync CAR holds blocks other than the commit")]
    SyncExtraBlocks,
    #[error("MST inversion failed: {0}")]
    Inversion(Sync11Error),
    #[error("legacy op (update/delete without prev) rejected by policy")]
    LegacyOp,
    /// The only error a key rotation can explain: re-resolve the identity and validate again.
    #[error("signature rejected: {0}")]
    Signature(SigError),
}

impl ValidationError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::TooLarge => "blocks-too-large",
            ValidationError::TooManyOps => "too-many-ops",
            ValidationError::RecordTooLarge => "record-too-large",
            ValidationError::EmptyBlocks => "empty-blocks",
            ValidationError::Car(e) => e.reason(),
            ValidationError::MissingCommitBlock => "missing-commit-block",
            ValidationError::CommitRootMismatch => "commit-root-mismatch",
            ValidationError::CommitCidNotBlessed => "commit-cid-not-blessed",
            ValidationError::Commit(e) => e.reason(),
            ValidationError::RepoMismatch => "repo-mismatch",
            ValidationError::RevMismatch => "rev-mismatch",
            ValidationError::FutureRev => "future-rev",
            ValidationError::DeprecatedField(_) => "deprecated-field",
            ValidationError::MissingPrevData => "missing-prev-data",
            ValidationError::BadTime => "bad-time",
            ValidationError::SyncExtraBlocks => "sync-extra-blocks",
            ValidationError::Inversion(e) => e.reason(),
            ValidationError::LegacyOp => "legacy-op",
            ValidationError::Signature(e) => e.reason(),
        }
    }

    /// True when re-resolving the account's key and validating again could change the result.
    pub fn is_signature(&self) -> bool {
        matches!(self, ValidationError::Signature(_))
    }
}

/// Parses the CAR, finds the commit at `roots[0]`, checks it against the event's CID, DID and
/// rev, and rejects a future rev. Shared by `#commit` and `#sync`.
fn load_commit(
    blocks: &Bytes,
    limits: &CarLimits,
    evt_commit: Option<&Cid>,
    evt_did: &str,
    evt_rev: &str,
    now_micros: u64,
    policy: &ValidationPolicy,
) -> Result<(Commit, car::Car), ValidationError> {
    if blocks.is_empty() {
        return Err(ValidationError::EmptyBlocks);
    }
    let car = car::read_car(blocks.clone(), limits).map_err(ValidationError::Car)?;
    // read_car guarantees at least one root.
    let root = *car
        .roots
        .first()
        .ok_or(ValidationError::Car(CarError::NoRoots))?;
    let block = car
        .blocks
        .get(&root)
        .ok_or(ValidationError::MissingCommitBlock)?;
    if evt_commit.is_some_and(|c| *c != root) {
        return Err(ValidationError::CommitRootMismatch);
    }
    // `Commit::cid` is the dag-cbor CID of the block; a root with another codec (same hash)
    // would make the stored commit CID differ from the one the event carries.
    if !is_blessed_dag_cbor(&root) {
        return Err(ValidationError::CommitCidNotBlessed);
    }
    let commit = Commit::decode(block).map_err(ValidationError::Commit)?;
    if commit.did != evt_did {
        return Err(ValidationError::RepoMismatch);
    }
    if Tid::parse(evt_rev).ok() != Some(commit.rev) {
        return Err(ValidationError::RevMismatch);
    }
    let limit = now_micros.saturating_add(policy.future_rev_tolerance_micros);
    if commit.rev.timestamp_micros() > limit {
        return Err(ValidationError::FutureRev);
    }
    Ok((commit, car))
}

fn verify_signature(commit: &Commit, key: &PublicKey) -> Result<(), ValidationError> {
    commit.verify_signature(key).map_err(|e| match e {
        CommitError::Signature(s) => ValidationError::Signature(s),
        other => ValidationError::Commit(other),
    })
}

/// The state a stored `#commit` or `#sync` left (`rev`, commit CID, MST root), read back from
/// its own blocks without verifying anything. Only for events this relay already validated
/// and stored: rebuilding account state from the event log's tail after a crash. `None`
/// for other kinds or blocks that do not hold the commit.
pub fn stored_state_of(msg: &Bytes) -> Option<RepoState> {
    let (blocks, commit_cid) = match super::frame::decode_frame(msg).ok()? {
        super::frame::Frame::Commit(c) => (c.blocks, Some(c.commit)),
        super::frame::Frame::Sync(s) => (s.blocks, None),
        _ => return None,
    };
    let limits = CarLimits {
        max_bytes: MAX_COMMIT_BLOCKS_BYTES.max(MAX_SYNC_BLOCKS_BYTES),
        max_blocks: MAX_COMMIT_CAR_BLOCKS,
    };
    let car = car::read_car(blocks, &limits).ok()?;
    let cid = commit_cid.or_else(|| car.roots.first().copied())?;
    let commit = Commit::decode(car.blocks.get(&cid)?).ok()?;
    Some(RepoState {
        rev: commit.rev,
        commit: cid,
        data: commit.data,
    })
}

/// Validates a `#commit` against the account's key and stored state (see the module docs for
/// the order of checks). `now_micros` is the wall clock in µs since the UNIX epoch.
pub fn validate_commit(
    evt: &CommitEvent,
    key: &PublicKey,
    stored: Option<&RepoState>,
    now_micros: u64,
    policy: &ValidationPolicy,
) -> Result<CommitVerdict, ValidationError> {
    if evt.blocks.len() > MAX_COMMIT_BLOCKS_BYTES {
        return Err(ValidationError::TooLarge);
    }
    if evt.ops.len() > MAX_COMMIT_OPS {
        return Err(ValidationError::TooManyOps);
    }
    let limits = CarLimits {
        max_bytes: MAX_COMMIT_BLOCKS_BYTES,
        max_blocks: MAX_COMMIT_CAR_BLOCKS,
    };
    let (commit, car) = load_commit(
        &evt.blocks,
        &limits,
        Some(&evt.commit),
        &evt.repo,
        &evt.rev,
        now_micros,
        policy,
    )?;
    if let Some(state) = stored
        && commit.rev <= state.rev
    {
        return Ok(CommitVerdict::Stale);
    }
    // Checked for every op, whether or not inversion runs below: a record block in the slice
    // larger than the limit is an error (an op whose block is absent is sync11's business).
    for op in &evt.ops {
        if let Some(block) = op.cid.as_ref().and_then(|cid| car.blocks.get(cid))
            && block.len() > MAX_RECORD_BLOCK_BYTES
        {
            return Err(ValidationError::RecordTooLarge);
        }
    }
    if policy.strict {
        if evt.too_big {
            return Err(ValidationError::DeprecatedField("tooBig"));
        }
        if evt.rebase {
            return Err(ValidationError::DeprecatedField("rebase"));
        }
        if evt.prev_data.is_none() && stored.is_some() {
            return Err(ValidationError::MissingPrevData);
        }
        if !is_valid_datetime(&evt.time) {
            return Err(ValidationError::BadTime);
        }
    }

    let discontinuity = stored.and_then(|state| {
        let prev_data_mismatch = evt.prev_data.is_some_and(|p| p != state.data);
        let since_mismatch =
            evt.since.as_deref().and_then(|s| Tid::parse(s).ok()) != Some(state.rev);
        (prev_data_mismatch || since_mismatch).then_some(Discontinuity {
            prev_data_mismatch,
            since_mismatch,
        })
    });

    let inversion = match (evt.prev_data, stored) {
        (None, None) => Inversion::FirstCommit,
        // Only reachable in lenient mode (strict returned MissingPrevData above).
        (None, Some(_)) => Inversion::NoPrevData,
        (Some(prev_data), _) => {
            let ops: Vec<CommitOp<'_>> = evt.ops.iter().map(|o| o.as_commit_op()).collect();
            match sync11::verify_commit(commit.data, prev_data, &ops, &car.blocks) {
                Sync11Outcome::Verified => Inversion::Verified,
                Sync11Outcome::Legacy => match policy.legacy {
                    LegacyPolicy::Accept => Inversion::Legacy,
                    LegacyPolicy::Reject => return Err(ValidationError::LegacyOp),
                },
                Sync11Outcome::Failed(_) if policy.inversion_failure_warns => {
                    Inversion::FailedWarnOnly
                }
                Sync11Outcome::Failed(e) => return Err(ValidationError::Inversion(e)),
            }
        }
    };

    verify_signature(&commit, key)?;
    Ok(CommitVerdict::Accept {
        new_state: RepoState {
            rev: commit.rev,
            commit: commit.cid,
            data: commit.data,
        },
        discontinuity,
        inversion,
    })
}

/// Validates a `#sync` (PROTOCOL.md §5 "#sync handling", §10 "Duplicates after reconnect").
pub fn validate_sync(
    evt: &SyncEvent,
    key: &PublicKey,
    stored: Option<&RepoState>,
    now_micros: u64,
    policy: &ValidationPolicy,
) -> Result<SyncVerdict, ValidationError> {
    if evt.blocks.len() > MAX_SYNC_BLOCKS_BYTES {
        return Err(ValidationError::TooLarge);
    }
    let limits = CarLimits {
        max_bytes: MAX_SYNC_BLOCKS_BYTES,
        max_blocks: 16,
    };
    let (commit, car) = load_commit(
        &evt.blocks,
        &limits,
        None,
        &evt.did,
        &evt.rev,
        now_micros,
        policy,
    )?;
    if policy.strict {
        if car.blocks.len() != 1 {
            return Err(ValidationError::SyncExtraBlocks);
        }
        if !is_valid_datetime(&evt.time) {
            return Err(ValidationError::BadTime);
        }
    }
    if let Some(state) = stored
        && state.rev == commit.rev
        && state.commit == commit.cid
    {
        return Ok(SyncVerdict::Duplicate);
    }
    verify_signature(&commit, key)?;
    Ok(SyncVerdict::Accept {
        new_state: RepoState {
            rev: commit.rev,
            commit: commit.cid,
            data: commit.data,
        },
        rollback: stored.is_some_and(|s| commit.rev < s.rev),
    })
}

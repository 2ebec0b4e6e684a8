//! The relay's account and authority rules (PROTOCOL.md §6, §7, §10) as pure functions: the
//! decisions a ValidatorShard makes around `atproto::validate`, with no I/O, no actor and no
//! clock of their own (time comes in as µs since the UNIX epoch, like `validate.rs`).
//!
//! How a shard uses them: for each frame it calls [`decide`] with what it knows (the account
//! record, the identity as the resolver has it, the source host). The outcome either finishes
//! the event ([`RuleOutcome::Forward`], [`RuleOutcome::Drop`]) or names one piece of I/O for
//! the shard to do (create or move the account, re-resolve the identity, hold, ask the host's
//! `getRepoStatus`, run validation), after which the shard calls [`decide`] again with the new
//! facts; after `validate_commit`/`validate_sync` it calls [`after_commit`]/[`after_sync`].
//! Each I/O step can happen at most once per event (re-resolve only when the view is not
//! `fresh`, recheck only when the account's recheck time has passed), so the loop ends.
//!
//! What this module never does: touch Postgres, the resolver, HTTP or a frame's bytes (the
//! rewrites are `frame::rewrite_account` / `frame::strip_identity_handle`, named here by
//! [`Rewrite`]), or decide anything `validate.rs` decides.
//!
//! Decisions worth knowing (each has a named row in the tests):
//! - Host authority: `#commit`, `#sync`, `#account` count only from the DID's current PDS host,
//!   compared with its port (`PdsEndpoint::host`, lower-cased, default port dropped). A
//!   mismatch re-resolves once, then drops `host-mismatch`; that is also how an old PDS's
//!   `#account deactivated` after a migration is ignored, and how accounts are never created
//!   from another host's events (no spidering).
//! - An account already recorded under another host whose current PDS is the source host has
//!   migrated: [`RuleOutcome::MoveAccount`].
//! - `throttled` (rookery's only throttle, set when a host is over its account limit; indigo
//!   calls it `host-throttled`) makes an account **inactive**: its commits and syncs are
//!   dropped and its `#account` is published as `active: false, status: "throttled"`.
//!   PROTOCOL.md §7's "local ∈ {active, throttled}" is indigo's *per-account* rate throttle,
//!   which keeps an account active; rookery has no such status, and counting the over-limit
//!   status as active would make the account limit a label with no effect.
//! - Takedown drops everything but `#account` (re-emitted as `takendown`).
//! - No usable identity: `Pending` holds (the shard keeps a bounded per-DID queue), then
//!   `Unresolvable` drops `identity-unresolvable`; `Broken` (tombstoned, no key, no PDS) drops
//!   commits and syncs. An `#account` then still counts when it comes from the host the account
//!   is recorded under (a tombstoned DID's final `#account deleted` must reach consumers).
//!
//! Lessons prevented: 19 (never forward without a verified signature: hold, then drop with a
//! counted reason), 13 (every state change is returned as an [`AccountChange`] for the
//! write-behind), and the §10 ones (re-resolve on a signature failure, forward a duplicate
//! `#sync`, pass a rollback).

use crate::atproto::validate::{CommitVerdict, RepoState, SyncVerdict, ValidationError};

use super::write_behind::{AccountStateUpdate, SyncState};

/// How long after a `getRepoStatus` re-check the same account may be re-checked again.
pub const UPSTREAM_RECHECK_INTERVAL_MICROS: u64 = 10 * 60 * 1_000_000;

/// Upstream status of an account whose PDS said nothing else (also the schema default).
pub const UPSTREAM_ACTIVE: &str = "active";
/// Upstream status stored for an `#account {active: false}` with no status (PROTOCOL.md §7).
pub const UPSTREAM_INACTIVE: &str = "inactive";
/// Upstream status of a deleted account (not counted against its host's limit).
pub const UPSTREAM_DELETED: &str = "deleted";
/// Longest upstream status kept. The lexicon's set is open, but its known values are short
/// words; a longer one would be stored in every cache entry and row and re-published, so it
/// is treated like a missing status.
pub const MAX_UPSTREAM_STATUS_LEN: usize = 64;

// ------------------------------------------------------------------------------------------
// Account state

/// `accounts.local_status`: what the relay itself decided about an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalStatus {
    Active,
    /// Relay takedown.
    Takendown,
    /// Created beyond its host's account limit.
    Throttled,
}

impl LocalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalStatus::Active => "active",
            LocalStatus::Takendown => "takendown",
            LocalStatus::Throttled => "throttled",
        }
    }

    /// The column value; `None` for anything the schema's CHECK would not allow.
    pub fn parse(s: &str) -> Option<LocalStatus> {
        match s {
            "active" => Some(LocalStatus::Active),
            "takendown" => Some(LocalStatus::Takendown),
            "throttled" => Some(LocalStatus::Throttled),
            _ => None,
        }
    }
}

/// One account as a shard knows it (cached by `account_store`, backed by Postgres).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    pub uid: i64,
    pub did: String,
    /// `hosts.id` of the PDS the account was last seen on with authority.
    pub host_id: i64,
    pub local_status: LocalStatus,
    /// From the PDS's `#account` events (an open set: `active`, `deactivated`, `deleted`, ...).
    pub upstream_status: String,
    /// The last verified commit; `None` before the first.
    pub sync: Option<RepoState>,
    /// Earliest time (µs) the upstream status may be re-checked with `getRepoStatus`; `None`
    /// when it never was. In memory only: after a restart one more re-check is harmless.
    pub upstream_recheck_after: Option<u64>,
}

impl AccountRecord {
    /// Whether the relay publishes this account as active.
    pub fn is_active(&self) -> bool {
        is_active(self.local_status, &self.upstream_status)
    }

    /// The `status` the relay publishes (`None` when active).
    pub fn published_status(&self) -> Option<&str> {
        published_status(self.local_status, &self.upstream_status)
    }
}

/// Active only when nothing local holds the account back and its PDS says it is active (see
/// the module doc for why `throttled` is not active here).
pub fn is_active(local: LocalStatus, upstream: &str) -> bool {
    local == LocalStatus::Active && upstream == UPSTREAM_ACTIVE
}

/// The `#account` status values of the lexicon (PROTOCOL.md §2): the only ones published.
pub const LEXICON_ACCOUNT_STATUSES: [&str; 6] = [
    "takendown",
    "suspended",
    "deleted",
    "deactivated",
    "desynchronized",
    "throttled",
];

/// The local status when set, otherwise the upstream one when it is a lexicon value; nothing
/// for an active account, nor for an inactive one whose host gave no (known) reason (indigo
/// publishes its internal `inactive` there; rookery publishes only lexicon values).
pub fn published_status(local: LocalStatus, upstream: &str) -> Option<&str> {
    match local {
        LocalStatus::Active if upstream == UPSTREAM_ACTIVE => None,
        LocalStatus::Active => LEXICON_ACCOUNT_STATUSES
            .contains(&upstream)
            .then_some(upstream),
        other => Some(other.as_str()),
    }
}

/// A change to one account, applied to the shard's cache at once and written behind to
/// Postgres ([`AccountChange::to_write`]) once its event is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountChange {
    pub uid: i64,
    pub sync: Option<RepoState>,
    pub upstream_status: Option<String>,
}

impl AccountChange {
    /// The write-behind's form (CIDs and revs as text, like `account_sync_state`).
    pub fn to_write(&self) -> AccountStateUpdate {
        AccountStateUpdate {
            uid: self.uid,
            sync: self.sync.as_ref().map(sync_state_of),
            upstream_status: self.upstream_status.clone(),
        }
    }
}

/// `RepoState` as `account_sync_state` stores it.
pub fn sync_state_of(state: &RepoState) -> SyncState {
    SyncState {
        rev: state.rev.to_string(),
        commit_cid: state.commit.to_string(),
        data_cid: state.data.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Inputs

/// The facts of the event that the rules read (the shard has them from `decode_frame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFacts<'a> {
    Commit,
    Sync,
    Identity {
        handle: Option<&'a str>,
    },
    Account {
        active: bool,
        status: Option<&'a str>,
    },
}

/// The upstream connection the frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// `hosts.id`.
    pub host_id: i64,
    /// `hosts.hostname`, with its port when it has one.
    pub hostname: &'a str,
}

/// The DID's identity as the resolver has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityView<'a> {
    /// A usable identity (signing key and PDS), possibly from a stale cache entry.
    Resolved {
        /// `PdsEndpoint::host`: host plus port when not the default.
        pds_host: &'a str,
        /// The handle the DID document declares (`alsoKnownAs`), if any.
        handle: Option<&'a str>,
        /// Resolved after a purge for this very event: a mismatch now is final.
        fresh: bool,
    },
    /// Not resolved yet (lookup in flight or retrying with backoff): hold the event.
    Pending,
    /// Resolution kept failing until the hold ran out.
    Unresolvable,
    /// Resolved to something unusable: not found or tombstoned, no signing key, or no PDS.
    Broken,
}

// ------------------------------------------------------------------------------------------
// Outcomes

/// Why an event was dropped on purpose. The bounded label set of the shard's drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The source host is not the DID's PDS (after one re-resolve).
    HostMismatch,
    AccountTakendown,
    /// Beyond its host's account limit.
    AccountThrottled,
    /// The PDS says the account is not active (re-checked at most every 10 minutes).
    AccountInactive,
    /// A retransmission: rev at or below the stored one.
    StaleRev,
    /// Signature still wrong with a freshly resolved key.
    BadSignature,
    /// No identity could be resolved within the hold.
    IdentityUnresolvable,
    /// The identity is tombstoned or has no key or PDS.
    IdentityBroken,
    /// `validate.rs` refused the event; the label is `ValidationError::reason` (a fixed set).
    Invalid(&'static str),
}

impl DropReason {
    /// Stable metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DropReason::HostMismatch => "host-mismatch",
            DropReason::AccountTakendown => "account-takendown",
            DropReason::AccountThrottled => "account-throttled",
            DropReason::AccountInactive => "account-inactive",
            DropReason::StaleRev => "stale-rev",
            DropReason::BadSignature => "bad-signature",
            DropReason::IdentityUnresolvable => "identity-unresolvable",
            DropReason::IdentityBroken => "identity-broken",
            DropReason::Invalid(reason) => reason,
        }
    }

    /// Counted but not logged: retransmissions are routine after every reconnect.
    pub fn is_quiet(&self) -> bool {
        matches!(self, DropReason::StaleRev)
    }
}

/// How the forwarded frame is changed before sequencing (beyond `seq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the bytes as received.
    None,
    /// `frame::rewrite_account(frame, active, status)`.
    Account {
        active: bool,
        status: Option<String>,
    },
    /// `frame::strip_identity_handle(frame)`.
    StripHandle,
}

/// Something worth counting about a forwarded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// `prevData`/`since` did not chain to the stored state (passed through).
    Discontinuity,
    /// A `#sync` below the stored rev (the PDS restored a backup).
    Rollback,
    /// A `#sync` equal to the stored state (forwarded: PROTOCOL.md §10).
    DuplicateSync,
    /// `#account {active: false}` without a status: stored as `inactive`, logged.
    InvalidAccountEvent,
    /// An `#identity` handle that the DID document does not declare was removed.
    HandleStripped,
}

impl Note {
    pub fn reason(&self) -> &'static str {
        match self {
            Note::Discontinuity => "discontinuity",
            Note::Rollback => "rollback",
            Note::DuplicateSync => "duplicate-sync",
            Note::InvalidAccountEvent => "invalid-account-event",
            Note::HandleStripped => "handle-stripped",
        }
    }
}

/// What to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub rewrite: Rewrite,
    /// Apply to the cache now; write behind with the event.
    pub change: Option<AccountChange>,
    pub note: Option<Note>,
}

/// The decision for one event, or the one piece of I/O needed before deciding again.
/// `Forward` is large (a `RepoState`) next to the others; an outcome lives for one call, and
/// boxing would cost an allocation on every forwarded event (as `validate::CommitVerdict`).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleOutcome {
    Forward(Forward),
    Drop(DropReason),
    /// Run `validate_commit`/`validate_sync` with the identity's key and the account's state,
    /// then [`after_commit`]/[`after_sync`].
    Validate,
    /// No account yet and the event comes from the DID's PDS: `account_store.create` (which
    /// applies the host's account limit), then decide again.
    CreateAccount,
    /// The account's PDS is now the source host: `account_store.move_to_host`, then decide
    /// again.
    MoveAccount {
        to_host_id: i64,
    },
    /// Purge the identity, `resolve_fresh`, decide again with `fresh: true`.
    ReResolve,
    /// No identity yet: hold the event (bounded, per DID, in order) and decide again when
    /// the resolver answers.
    Hold,
    /// Ask the host's `getRepoStatus`; record `next_allowed` as the account's
    /// `upstream_recheck_after`, store the status it reports, and decide again.
    RecheckUpstream {
        next_allowed: u64,
    },
}

// ------------------------------------------------------------------------------------------
// Rules

/// Whether `source` is the DID's PDS host. Hostnames are case-insensitive; both sides carry
/// the port when it is not the default.
pub fn is_authoritative(source: &Source<'_>, pds_host: &str) -> bool {
    source.hostname.eq_ignore_ascii_case(pds_host)
}

/// The decision for one event before validation (see the module doc for the loop).
pub fn decide(
    event: EventFacts<'_>,
    account: Option<&AccountRecord>,
    identity: IdentityView<'_>,
    source: &Source<'_>,
    now_micros: u64,
) -> RuleOutcome {
    if let EventFacts::Identity { handle } = event {
        return decide_identity(handle, account, identity, source);
    }
    let (pds_host, fresh) = match identity {
        IdentityView::Resolved {
            pds_host, fresh, ..
        } => (pds_host, fresh),
        IdentityView::Pending => return RuleOutcome::Hold,
        // Without an identity, an `#account` still counts from the host the account is
        // recorded under (the last host that proved its authority).
        IdentityView::Unresolvable | IdentityView::Broken => {
            if let (EventFacts::Account { active, status }, Some(acct)) = (event, account)
                && acct.host_id == source.host_id
            {
                return account_event(active, status, acct);
            }
            return RuleOutcome::Drop(if identity == IdentityView::Broken {
                DropReason::IdentityBroken
            } else {
                DropReason::IdentityUnresolvable
            });
        }
    };
    if !is_authoritative(source, pds_host) {
        return if fresh {
            RuleOutcome::Drop(DropReason::HostMismatch)
        } else {
            RuleOutcome::ReResolve
        };
    }
    let Some(acct) = account else {
        return RuleOutcome::CreateAccount;
    };
    if acct.host_id != source.host_id {
        return RuleOutcome::MoveAccount {
            to_host_id: source.host_id,
        };
    }
    match event {
        EventFacts::Account { active, status } => account_event(active, status, acct),
        _ => repo_event(acct, now_micros),
    }
}

/// `#commit` / `#sync` of an account on its own host: status checks, then validation.
fn repo_event(acct: &AccountRecord, now_micros: u64) -> RuleOutcome {
    match acct.local_status {
        LocalStatus::Takendown => return RuleOutcome::Drop(DropReason::AccountTakendown),
        LocalStatus::Throttled => return RuleOutcome::Drop(DropReason::AccountThrottled),
        LocalStatus::Active => {}
    }
    if acct.upstream_status != UPSTREAM_ACTIVE {
        // The host keeps sending commits for an account it called inactive: ask it once
        // (per interval) whether that is still true before dropping (indigo asks every time).
        let due = acct.upstream_recheck_after.is_none_or(|t| now_micros >= t);
        return if due {
            RuleOutcome::RecheckUpstream {
                next_allowed: now_micros.saturating_add(UPSTREAM_RECHECK_INTERVAL_MICROS),
            }
        } else {
            RuleOutcome::Drop(DropReason::AccountInactive)
        };
    }
    RuleOutcome::Validate
}

/// An authoritative `#account`: store the upstream status, publish the relay's own view.
fn account_event(active: bool, status: Option<&str>, acct: &AccountRecord) -> RuleOutcome {
    let (upstream, note) = match (active, status) {
        (true, _) => (UPSTREAM_ACTIVE, None),
        (false, Some(s))
            if !s.is_empty() && s.len() <= MAX_UPSTREAM_STATUS_LEN && s != UPSTREAM_ACTIVE =>
        {
            (s, None)
        }
        (false, _) => (UPSTREAM_INACTIVE, Some(Note::InvalidAccountEvent)),
    };
    let published_active = is_active(acct.local_status, upstream);
    let published = published_status(acct.local_status, upstream).map(str::to_string);
    let change = (acct.upstream_status != upstream).then(|| AccountChange {
        uid: acct.uid,
        sync: None,
        upstream_status: Some(upstream.to_string()),
    });
    RuleOutcome::Forward(Forward {
        rewrite: Rewrite::Account {
            active: published_active,
            status: published,
        },
        change,
        note,
    })
}

/// `#identity`: from any host, always against a fresh resolution; forwarded with the handle
/// only when the DID document declares that handle. From the DID's PDS it also creates or
/// moves the account (account creation starts with `#identity`).
fn decide_identity(
    handle: Option<&str>,
    account: Option<&AccountRecord>,
    identity: IdentityView<'_>,
    source: &Source<'_>,
) -> RuleOutcome {
    if account.is_some_and(|a| a.local_status == LocalStatus::Takendown) {
        return RuleOutcome::Drop(DropReason::AccountTakendown);
    }
    let declared = match identity {
        IdentityView::Resolved { fresh: false, .. } => return RuleOutcome::ReResolve,
        IdentityView::Pending => return RuleOutcome::Hold,
        IdentityView::Resolved {
            pds_host, handle, ..
        } => {
            if is_authoritative(source, pds_host) {
                match account {
                    None => return RuleOutcome::CreateAccount,
                    Some(a) if a.host_id != source.host_id => {
                        return RuleOutcome::MoveAccount {
                            to_host_id: source.host_id,
                        };
                    }
                    Some(_) => {}
                }
            }
            handle
        }
        // Nothing can vouch for a handle; the event itself still tells consumers to look.
        IdentityView::Unresolvable | IdentityView::Broken => None,
    };
    let keep = match (handle, declared) {
        (None, _) => true,
        (Some(h), Some(d)) => h.eq_ignore_ascii_case(d),
        (Some(_), None) => false,
    };
    RuleOutcome::Forward(Forward {
        rewrite: if keep {
            Rewrite::None
        } else {
            Rewrite::StripHandle
        },
        change: None,
        note: (!keep).then_some(Note::HandleStripped),
    })
}

/// A validation error: a signature failure re-resolves once (a key rotation the cache has
/// not seen), anything else is an invalid event.
fn refused(err: &ValidationError, fresh: bool) -> RuleOutcome {
    match (err.is_signature(), fresh) {
        (true, false) => RuleOutcome::ReResolve,
        (true, true) => RuleOutcome::Drop(DropReason::BadSignature),
        (false, _) => RuleOutcome::Drop(DropReason::Invalid(err.reason())),
    }
}

/// After `validate_commit`. `fresh`: the key came from a resolution made for this event.
pub fn after_commit(
    result: &Result<CommitVerdict, ValidationError>,
    account: &AccountRecord,
    fresh: bool,
) -> RuleOutcome {
    match result {
        Ok(CommitVerdict::Accept {
            new_state,
            discontinuity,
            ..
        }) => RuleOutcome::Forward(Forward {
            rewrite: Rewrite::None,
            change: Some(AccountChange {
                uid: account.uid,
                sync: Some(*new_state),
                upstream_status: None,
            }),
            note: discontinuity.map(|_| Note::Discontinuity),
        }),
        Ok(CommitVerdict::Stale) => RuleOutcome::Drop(DropReason::StaleRev),
        Err(e) => refused(e, fresh),
    }
}

/// After `validate_sync`: a duplicate is forwarded (not a drop), a rollback passed and noted,
/// except on a connection `catching_up` (replaying what may be stored), where a lower rev is
/// an old `#sync` replayed and is dropped as stale
/// ([`super::shard_router::UpstreamFrame::catching_up`]).
pub fn after_sync(
    result: &Result<SyncVerdict, ValidationError>,
    account: &AccountRecord,
    fresh: bool,
    catching_up: bool,
) -> RuleOutcome {
    match result {
        Ok(SyncVerdict::Accept { rollback: true, .. }) if catching_up => {
            RuleOutcome::Drop(DropReason::StaleRev)
        }
        Ok(SyncVerdict::Accept {
            new_state,
            rollback,
        }) => RuleOutcome::Forward(Forward {
            rewrite: Rewrite::None,
            change: Some(AccountChange {
                uid: account.uid,
                sync: Some(*new_state),
                upstream_status: None,
            }),
            note: rollback.then_some(Note::Rollback),
        }),
        Ok(SyncVerdict::Duplicate) => RuleOutcome::Forward(Forward {
            rewrite: Rewrite::None,
            change: None,
            note: Some(Note::DuplicateSync),
        }),
        Err(e) => refused(e, fresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::cid::cid_for_dag_cbor;
    use crate::atproto::keys::SigError;
    use crate::atproto::tid::Tid;
    use crate::atproto::validate::{Discontinuity, Inversion};

    const NOW: u64 = 1_750_000_000_000_000;
    const PDS: &str = "pds.example.com";
    const PDS_HOST_ID: i64 = 7;

    fn pds() -> Source<'static> {
        Source {
            host_id: PDS_HOST_ID,
            hostname: PDS,
        }
    }

    fn other() -> Source<'static> {
        Source {
            host_id: 9,
            hostname: "other.example.net",
        }
    }

    fn resolved(fresh: bool) -> IdentityView<'static> {
        IdentityView::Resolved {
            pds_host: PDS,
            handle: Some("alice.example.com"),
            fresh,
        }
    }

    fn account(local: LocalStatus, upstream: &str) -> AccountRecord {
        AccountRecord {
            uid: 42,
            did: "did:plc:alice".into(),
            host_id: PDS_HOST_ID,
            local_status: local,
            upstream_status: upstream.into(),
            sync: None,
            upstream_recheck_after: None,
        }
    }

    fn active() -> AccountRecord {
        account(LocalStatus::Active, UPSTREAM_ACTIVE)
    }

    fn state(rev: &str) -> RepoState {
        RepoState {
            rev: Tid::parse(rev).expect("tid"),
            commit: cid_for_dag_cbor(rev.as_bytes()),
            data: cid_for_dag_cbor(b"data"),
        }
    }

    fn forward(rewrite: Rewrite, change: Option<AccountChange>, note: Option<Note>) -> RuleOutcome {
        RuleOutcome::Forward(Forward {
            rewrite,
            change,
            note,
        })
    }

    fn publish(active: bool, status: Option<&str>) -> Rewrite {
        Rewrite::Account {
            active,
            status: status.map(str::to_string),
        }
    }

    fn upstream(s: &str) -> Option<AccountChange> {
        Some(AccountChange {
            uid: 42,
            sync: None,
            upstream_status: Some(s.into()),
        })
    }

    fn drop(reason: DropReason) -> RuleOutcome {
        RuleOutcome::Drop(reason)
    }

    struct Case {
        name: &'static str,
        event: EventFacts<'static>,
        account: Option<AccountRecord>,
        identity: IdentityView<'static>,
        source: Source<'static>,
        want: RuleOutcome,
    }

    fn case(
        name: &'static str,
        event: EventFacts<'static>,
        account: Option<AccountRecord>,
        identity: IdentityView<'static>,
        source: Source<'static>,
        want: RuleOutcome,
    ) -> Case {
        Case {
            name,
            event,
            account,
            identity,
            source,
            want,
        }
    }

    const LONG_STATUS: &str =
        "deactivated-deactivated-deactivated-deactivated-deactivated-deactivated";
    const COMMIT: EventFacts<'static> = EventFacts::Commit;
    const SYNC: EventFacts<'static> = EventFacts::Sync;

    fn acct_evt(active: bool, status: Option<&'static str>) -> EventFacts<'static> {
        EventFacts::Account { active, status }
    }

    fn ident(handle: Option<&'static str>) -> EventFacts<'static> {
        EventFacts::Identity { handle }
    }

    #[test]
    #[rustfmt::skip] // one named row per line
    fn decide_table() {
        use DropReason::*;
        let mut moved = active();
        moved.host_id = 3;
        let recheck_later = AccountRecord {
            upstream_recheck_after: Some(NOW + 1),
            ..account(LocalStatus::Active, "deactivated")
        };
        let recheck_due = AccountRecord {
            upstream_recheck_after: Some(NOW),
            ..account(LocalStatus::Active, "deactivated")
        };
        let port = IdentityView::Resolved {
            pds_host: "pds.example.com:2583",
            handle: None,
            fresh: true,
        };
        let cases = vec![
            // Host authority.
            case("commit from the PDS of an active account validates", COMMIT, Some(active()), resolved(false), pds(), RuleOutcome::Validate),
            case("sync from the PDS of an active account validates", SYNC, Some(active()), resolved(false), pds(), RuleOutcome::Validate),
            case("host compared case-insensitively", COMMIT, Some(active()), resolved(false), Source { host_id: PDS_HOST_ID, hostname: "PDS.Example.COM" }, RuleOutcome::Validate),
            case("commit from another host re-resolves once", COMMIT, Some(active()), resolved(false), other(), RuleOutcome::ReResolve),
            case("commit from another host after a fresh resolve drops", COMMIT, Some(active()), resolved(true), other(), drop(HostMismatch)),
            case("host compared with its port", COMMIT, Some(active()), port, pds(), drop(HostMismatch)),
            case("sync from another host after a fresh resolve drops", SYNC, Some(active()), resolved(true), other(), drop(HostMismatch)),
            case("old host's #account deactivated after migration is ignored", acct_evt(false, Some("deactivated")), Some(active()), resolved(true), other(), drop(HostMismatch)),
            // Account creation (no spidering) and migration.
            case("unknown account from its PDS is created", COMMIT, None, resolved(false), pds(), RuleOutcome::CreateAccount),
            case("unknown account's #account from its PDS is created", acct_evt(true, None), None, resolved(false), pds(), RuleOutcome::CreateAccount),
            case("unknown account from another host is never created", COMMIT, None, resolved(true), other(), drop(HostMismatch)),
            case("account recorded on another host, event from its new PDS, moves", COMMIT, Some(moved.clone()), resolved(false), pds(), RuleOutcome::MoveAccount { to_host_id: PDS_HOST_ID }),
            case("migration's #account active from the new PDS moves first", acct_evt(true, None), Some(moved), resolved(false), pds(), RuleOutcome::MoveAccount { to_host_id: PDS_HOST_ID }),
            // Status of commits and syncs.
            case("takendown account's commit drops", COMMIT, Some(account(LocalStatus::Takendown, UPSTREAM_ACTIVE)), resolved(false), pds(), drop(AccountTakendown)),
            case("takendown account's sync drops", SYNC, Some(account(LocalStatus::Takendown, UPSTREAM_ACTIVE)), resolved(false), pds(), drop(AccountTakendown)),
            case("throttled account's commit drops", COMMIT, Some(account(LocalStatus::Throttled, UPSTREAM_ACTIVE)), resolved(false), pds(), drop(AccountThrottled)),
            case("upstream-inactive account never re-checked asks getRepoStatus", COMMIT, Some(account(LocalStatus::Active, "deactivated")), resolved(false), pds(), RuleOutcome::RecheckUpstream { next_allowed: NOW + UPSTREAM_RECHECK_INTERVAL_MICROS }),
            case("upstream-inactive account re-checked recently drops", COMMIT, Some(recheck_later), resolved(false), pds(), drop(AccountInactive)),
            case("upstream-inactive account whose recheck time came asks again", SYNC, Some(recheck_due), resolved(false), pds(), RuleOutcome::RecheckUpstream { next_allowed: NOW + UPSTREAM_RECHECK_INTERVAL_MICROS }),
            case("takedown wins over an upstream recheck", COMMIT, Some(account(LocalStatus::Takendown, "deactivated")), resolved(false), pds(), drop(AccountTakendown)),
            // Identity not usable.
            case("commit with identity pending holds", COMMIT, Some(active()), IdentityView::Pending, pds(), RuleOutcome::Hold),
            case("commit whose identity stayed unresolvable drops", COMMIT, Some(active()), IdentityView::Unresolvable, pds(), drop(IdentityUnresolvable)),
            case("commit of a broken identity drops", COMMIT, Some(active()), IdentityView::Broken, pds(), drop(IdentityBroken)),
            case("sync of a broken identity drops", SYNC, None, IdentityView::Broken, pds(), drop(IdentityBroken)),
            case("#account with identity pending holds", acct_evt(false, Some("deleted")), Some(active()), IdentityView::Pending, pds(), RuleOutcome::Hold),
            case("tombstoned DID's #account deleted from its recorded host passes", acct_evt(false, Some("deleted")), Some(active()), IdentityView::Broken, pds(), forward(publish(false, Some("deleted")), upstream("deleted"), None)),
            case("broken identity's #account from another host drops", acct_evt(false, Some("deleted")), Some(active()), IdentityView::Broken, other(), drop(IdentityBroken)),
            case("unresolvable identity's #account of an unknown account drops", acct_evt(true, None), None, IdentityView::Unresolvable, pds(), drop(IdentityUnresolvable)),
            // #account: upstream status stored, relay's view published.
            case("#account active of an active account: no change", acct_evt(true, None), Some(active()), resolved(false), pds(), forward(publish(true, None), None, None)),
            case("#account deactivated stores and publishes it", acct_evt(false, Some("deactivated")), Some(active()), resolved(false), pds(), forward(publish(false, Some("deactivated")), upstream("deactivated"), None)),
            case("#account reactivation from the current PDS", acct_evt(true, None), Some(account(LocalStatus::Active, "deactivated")), resolved(false), pds(), forward(publish(true, None), upstream(UPSTREAM_ACTIVE), None)),
            case("#account active=false without status is stored inactive and noted", acct_evt(false, None), Some(active()), resolved(false), pds(), forward(publish(false, None), upstream(UPSTREAM_INACTIVE), Some(Note::InvalidAccountEvent))),
            case("#account active=false status=active is invalid too", acct_evt(false, Some("active")), Some(active()), resolved(false), pds(), forward(publish(false, None), upstream(UPSTREAM_INACTIVE), Some(Note::InvalidAccountEvent))),
            case("#account with an oversized status is stored inactive and noted", acct_evt(false, Some(LONG_STATUS)), Some(active()), resolved(false), pds(), forward(publish(false, None), upstream(UPSTREAM_INACTIVE), Some(Note::InvalidAccountEvent))),
            case("#account active=true with a status publishes active", acct_evt(true, Some("deactivated")), Some(active()), resolved(false), pds(), forward(publish(true, None), None, None)),
            case("#account active of a takendown account publishes takendown", acct_evt(true, None), Some(account(LocalStatus::Takendown, "deactivated")), resolved(false), pds(), forward(publish(false, Some("takendown")), upstream(UPSTREAM_ACTIVE), None)),
            case("#account active of a throttled account publishes throttled", acct_evt(true, None), Some(account(LocalStatus::Throttled, UPSTREAM_ACTIVE)), resolved(false), pds(), forward(publish(false, Some("throttled")), None, None)),
            case("#account deleted of a throttled account publishes throttled", acct_evt(false, Some("deleted")), Some(account(LocalStatus::Throttled, UPSTREAM_ACTIVE)), resolved(false), pds(), forward(publish(false, Some("throttled")), upstream("deleted"), None)),
            // #identity: any host, always freshly resolved, handle only when declared.
            case("#identity re-resolves first", ident(Some("alice.example.com")), Some(active()), resolved(false), other(), RuleOutcome::ReResolve),
            case("#identity from any host with the declared handle is kept", ident(Some("alice.example.com")), Some(active()), resolved(true), other(), forward(Rewrite::None, None, None)),
            case("#identity handle compared case-insensitively", ident(Some("Alice.Example.com")), Some(active()), resolved(true), pds(), forward(Rewrite::None, None, None)),
            case("#identity with another handle is stripped", ident(Some("mallory.example.com")), Some(active()), resolved(true), other(), forward(Rewrite::StripHandle, None, Some(Note::HandleStripped))),
            case("#identity without handle passes", ident(None), Some(active()), resolved(true), other(), forward(Rewrite::None, None, None)),
            case("#identity with a handle the document does not declare is stripped", ident(Some("alice.example.com")), Some(active()), IdentityView::Resolved { pds_host: PDS, handle: None, fresh: true }, pds(), forward(Rewrite::StripHandle, None, Some(Note::HandleStripped))),
            case("#identity of an unknown account from its PDS creates it", ident(Some("alice.example.com")), None, resolved(true), pds(), RuleOutcome::CreateAccount),
            case("#identity of an unknown account from another host passes, no account", ident(None), None, resolved(true), other(), forward(Rewrite::None, None, None)),
            case("#identity from the new PDS moves the account", ident(None), Some(AccountRecord { host_id: 3, ..active() }), resolved(true), pds(), RuleOutcome::MoveAccount { to_host_id: PDS_HOST_ID }),
            case("#identity with identity pending holds", ident(None), None, IdentityView::Pending, pds(), RuleOutcome::Hold),
            case("#identity of a broken identity passes without handle", ident(Some("alice.example.com")), Some(active()), IdentityView::Broken, pds(), forward(Rewrite::StripHandle, None, Some(Note::HandleStripped))),
            case("#identity of an unresolvable identity passes without handle", ident(Some("alice.example.com")), None, IdentityView::Unresolvable, other(), forward(Rewrite::StripHandle, None, Some(Note::HandleStripped))),
            case("#identity of a takendown account drops", ident(None), Some(account(LocalStatus::Takendown, UPSTREAM_ACTIVE)), resolved(true), pds(), drop(AccountTakendown)),
        ];
        let mut names = std::collections::HashSet::new();
        for c in &cases {
            assert!(names.insert(c.name), "duplicate case name {}", c.name);
            let got = decide(c.event, c.account.as_ref(), c.identity, &c.source, NOW);
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    #[rustfmt::skip] // one named row per line
    fn after_validation_table() {
        use DropReason::*;
        let acct = active();
        let new = state("3jzfcijpj2z2a");
        let sync_change = Some(AccountChange {
            uid: 42,
            sync: Some(new),
            upstream_status: None,
        });
        let sig = ValidationError::Signature(SigError::Invalid);
        let bad = ValidationError::FutureRev;
        let accept = |discontinuity| {
            Ok(CommitVerdict::Accept {
                new_state: new,
                discontinuity,
                inversion: Inversion::Verified,
            })
        };
        let gap = Some(Discontinuity {
            prev_data_mismatch: true,
            since_mismatch: false,
        });
        let commits: Vec<(&str, Result<CommitVerdict, ValidationError>, bool, RuleOutcome)> = vec![
            ("accepted commit forwards and stores its state", accept(None), false, forward(Rewrite::None, sync_change.clone(), None)),
            ("discontinuous commit forwards, noted", accept(gap), false, forward(Rewrite::None, sync_change.clone(), Some(Note::Discontinuity))),
            ("stale commit drops quietly", Ok(CommitVerdict::Stale), false, drop(StaleRev)),
            ("signature failure re-resolves once", Err(sig.clone()), false, RuleOutcome::ReResolve),
            ("signature failure with a fresh key drops", Err(sig.clone()), true, drop(BadSignature)),
            ("other validation errors drop with their reason", Err(bad.clone()), false, drop(Invalid("future-rev"))),
        ];
        for (name, result, fresh, want) in commits {
            assert_eq!(after_commit(&result, &acct, fresh), want, "{name}");
        }
        let syncs: Vec<(&str, Result<SyncVerdict, ValidationError>, bool, RuleOutcome)> = vec![
            ("accepted sync forwards and stores", Ok(SyncVerdict::Accept { new_state: new, rollback: false }), false, forward(Rewrite::None, sync_change.clone(), None)),
            ("rollback sync forwards, resets state, noted", Ok(SyncVerdict::Accept { new_state: new, rollback: true }), false, forward(Rewrite::None, sync_change.clone(), Some(Note::Rollback))),
            ("duplicate sync is forwarded, not dropped", Ok(SyncVerdict::Duplicate), false, forward(Rewrite::None, None, Some(Note::DuplicateSync))),
            ("sync signature failure re-resolves once", Err(sig.clone()), false, RuleOutcome::ReResolve),
            ("sync signature failure with a fresh key drops", Err(sig), true, drop(BadSignature)),
            ("invalid sync drops", Err(bad), true, drop(Invalid("future-rev"))),
        ];
        for (name, result, fresh, want) in syncs {
            assert_eq!(after_sync(&result, &acct, fresh, false), want, "{name}");
        }
        // Catching up on a whole outbox: a lower rev is history replayed, dropped as stale;
        // everything else is decided as on any connection.
        let rollback = Ok(SyncVerdict::Accept { new_state: new, rollback: true });
        assert_eq!(after_sync(&rollback, &acct, false, true), drop(StaleRev));
        let newer = Ok(SyncVerdict::Accept { new_state: new, rollback: false });
        assert_eq!(
            after_sync(&newer, &acct, false, true),
            forward(Rewrite::None, sync_change.clone(), None)
        );
    }

    #[test]
    fn published_state_table() {
        use LocalStatus::*;
        let rows = [
            ("active/active", Active, "active", true, None),
            (
                "active/deactivated",
                Active,
                "deactivated",
                false,
                Some("deactivated"),
            ),
            ("active/deleted", Active, "deleted", false, Some("deleted")),
            (
                "throttled/active",
                Throttled,
                "active",
                false,
                Some("throttled"),
            ),
            (
                "takendown/active",
                Takendown,
                "active",
                false,
                Some("takendown"),
            ),
            (
                "takendown/deactivated: local wins",
                Takendown,
                "deactivated",
                false,
                Some("takendown"),
            ),
            (
                "active/inactive (no reason given): no status published",
                Active,
                UPSTREAM_INACTIVE,
                false,
                None,
            ),
            (
                "active/an unknown upstream status: not published",
                Active,
                "on-vacation",
                false,
                None,
            ),
        ];
        for (name, local, up, want_active, want_status) in rows {
            let a = account(local, up);
            assert_eq!(a.is_active(), want_active, "{name}");
            assert_eq!(a.published_status(), want_status, "{name}");
        }
    }

    #[test]
    fn the_oversized_status_row_is_oversized() {
        assert!(LONG_STATUS.len() > MAX_UPSTREAM_STATUS_LEN);
    }

    #[test]
    fn labels_are_stable_and_distinct() {
        use DropReason::*;
        let all = [
            HostMismatch,
            AccountTakendown,
            AccountThrottled,
            AccountInactive,
            StaleRev,
            BadSignature,
            IdentityUnresolvable,
            IdentityBroken,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(DropReason::reason).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(Invalid("future-rev").reason(), "future-rev");
        assert!(StaleRev.is_quiet() && !HostMismatch.is_quiet());
        for s in ["active", "takendown", "throttled"] {
            assert_eq!(LocalStatus::parse(s).map(LocalStatus::as_str), Some(s));
        }
        assert_eq!(LocalStatus::parse("deleted"), None);
    }

    #[test]
    fn account_change_becomes_the_write_behind_update() {
        let s = state("3jzfcijpj2z2a");
        let change = AccountChange {
            uid: 5,
            sync: Some(s),
            upstream_status: Some("deleted".into()),
        };
        let w = change.to_write();
        assert_eq!(w.uid, 5);
        let sync = w.sync.expect("sync");
        assert_eq!(sync.rev, "3jzfcijpj2z2a");
        assert_eq!(sync.commit_cid, s.commit.to_string());
        assert!(sync.data_cid.starts_with("bafyrei"));
        assert_eq!(w.upstream_status.as_deref(), Some("deleted"));
    }
}

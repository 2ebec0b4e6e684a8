//! The shard's pure parts composed the way the ValidatorShard will compose them (rules →
//! account changes → validation → rules → rewrites), over every indigo relay scenario with
//! in-memory accounts: every message is forwarded or dropped as the scenario expects, the
//! re-emitted `#account`/`#identity` frames carry the relay's values, and the same frames from
//! a host that is not the DID's PDS only pass as `#identity`.

use crate::common::vectors as common;

use std::collections::HashMap;

use bytes::Bytes;
use rookery::actors::shard_rules::{
    self, AccountRecord, DropReason, EventFacts, IdentityView, LocalStatus, Note, Rewrite,
    RuleOutcome, Source,
};
use rookery::atproto::did_doc::PdsEndpoint;
use rookery::atproto::frame::{self, Frame};
use rookery::atproto::keys::{Curve, PrivateKey, PublicKey};
use rookery::atproto::validate::{ValidationPolicy, validate_commit, validate_sync};
use serde_json::Value;

/// 2025-04-17T00:00:00Z: after every rev in the relay scenarios.
const NOW: u64 = 1_744_848_000_000_000;
const HOST_LIMIT: usize = 100;

struct Identity {
    pds_host: String,
    handle: Option<String>,
    key: PublicKey,
    /// What a stale cache entry holds (a key rotated without `#identity`); `fresh`
    /// resolutions return `key`.
    cached_key: Option<PublicKey>,
}

/// What one message became.
#[derive(Debug)]
struct Emitted {
    outcome: Result<(Bytes, Option<Note>), DropReason>,
    /// Identity re-resolutions this message caused.
    re_resolves: usize,
}

/// A ValidatorShard without actors or Postgres: one host, accounts in a map.
struct MiniShard {
    host_id: i64,
    hostname: String,
    policy: ValidationPolicy,
    identities: HashMap<String, Identity>,
    accounts: HashMap<String, AccountRecord>,
    last_seq: i64,
}

impl MiniShard {
    fn new(scenario: &Value, hostname: Option<&str>) -> MiniShard {
        let mut identities = HashMap::new();
        let mut pds = String::new();
        for account in scenario["accounts"].as_array().expect("accounts") {
            let id = &account["identity"];
            let endpoint = id["services"]["atproto_pds"]["url"].as_str().expect("pds");
            let pds_host = PdsEndpoint::parse(endpoint).expect("endpoint").host;
            pds = pds_host.clone();
            let handle = id["alsoKnownAs"][0]
                .as_str()
                .and_then(|a| a.strip_prefix("at://"))
                .map(str::to_string);
            let key = id["keys"]["atproto"]["publicKeyMultibase"]
                .as_str()
                .expect("key");
            identities.insert(
                id["did"].as_str().expect("did").to_string(),
                Identity {
                    pds_host,
                    handle,
                    key: PublicKey::from_multikey(key).expect("multikey"),
                    cached_key: None,
                },
            );
        }
        MiniShard {
            host_id: 1,
            hostname: hostname.unwrap_or(&pds).to_string(),
            policy: if scenario["lenient"].as_bool().expect("lenient") {
                ValidationPolicy::lenient()
            } else {
                ValidationPolicy::default()
            },
            identities,
            accounts: HashMap::new(),
            last_seq: 0,
        }
    }

    /// One message through the Subscriber's seq check and the shard's decision loop. `None`:
    /// dropped by the Subscriber (not the shard's business).
    fn handle(&mut self, msg: &Bytes) -> Option<Emitted> {
        let peek = frame::peek_event(msg).expect("peek");
        let seq = peek.seq.expect("seq") as i64;
        if seq <= self.last_seq {
            return None;
        }
        self.last_seq = seq;
        let decoded = frame::decode_frame(msg).expect("decode");
        let (did, facts) = match &decoded {
            Frame::Commit(c) => (c.repo.clone(), EventFacts::Commit),
            Frame::Sync(s) => (s.did.clone(), EventFacts::Sync),
            Frame::Identity(i) => (
                i.did.clone(),
                EventFacts::Identity {
                    handle: i.handle.as_deref(),
                },
            ),
            Frame::Account(a) => (
                a.did.clone(),
                EventFacts::Account {
                    active: a.active,
                    status: a.status.as_deref(),
                },
            ),
            other => panic!("unexpected {other:?}"),
        };
        let source = Source {
            host_id: self.host_id,
            hostname: &self.hostname,
        };
        let identity = &self.identities[&did];
        let mut fresh = false;
        let mut re_resolves = 0;
        // Each I/O step happens at most once per event; a loop longer than this is a bug.
        for _ in 0..8 {
            let view = IdentityView::Resolved {
                pds_host: &identity.pds_host,
                handle: identity.handle.as_deref(),
                fresh,
            };
            let mut outcome =
                shard_rules::decide(facts, self.accounts.get(&did), view, &source, NOW);
            if outcome == RuleOutcome::Validate {
                let account = &self.accounts[&did];
                let key = match (&identity.cached_key, fresh) {
                    (Some(cached), false) => cached,
                    _ => &identity.key,
                };
                outcome = match &decoded {
                    Frame::Commit(c) => shard_rules::after_commit(
                        &validate_commit(c, key, account.sync.as_ref(), NOW, &self.policy),
                        account,
                        fresh,
                    ),
                    Frame::Sync(s) => shard_rules::after_sync(
                        &validate_sync(s, key, account.sync.as_ref(), NOW, &self.policy),
                        account,
                        fresh,
                        false,
                    ),
                    other => panic!("validate asked for {other:?}"),
                };
            }
            match outcome {
                RuleOutcome::Forward(f) => {
                    if let Some(change) = &f.change {
                        let account = self.accounts.get_mut(&did).expect("account");
                        if let Some(sync) = change.sync {
                            account.sync = Some(sync);
                        }
                        if let Some(status) = &change.upstream_status {
                            account.upstream_status.clone_from(status);
                        }
                    }
                    let out = match &f.rewrite {
                        Rewrite::None => msg.clone(),
                        Rewrite::Account { active, status } => {
                            frame::rewrite_account(msg, *active, status.as_deref()).expect("rw")
                        }
                        Rewrite::StripHandle => frame::strip_identity_handle(msg).expect("strip"),
                    };
                    return Some(Emitted {
                        outcome: Ok((out, f.note)),
                        re_resolves,
                    });
                }
                RuleOutcome::Drop(reason) => {
                    return Some(Emitted {
                        outcome: Err(reason),
                        re_resolves,
                    });
                }
                RuleOutcome::CreateAccount => {
                    let on_host = self
                        .accounts
                        .values()
                        .filter(|a| a.host_id == self.host_id && a.upstream_status != "deleted")
                        .count();
                    let record = AccountRecord {
                        uid: self.accounts.len() as i64 + 1,
                        did: did.clone(),
                        host_id: self.host_id,
                        local_status: if on_host >= HOST_LIMIT {
                            LocalStatus::Throttled
                        } else {
                            LocalStatus::Active
                        },
                        upstream_status: "active".into(),
                        sync: None,
                        upstream_recheck_after: None,
                    };
                    self.accounts.insert(did.clone(), record);
                }
                RuleOutcome::MoveAccount { to_host_id } => {
                    self.accounts.get_mut(&did).expect("account").host_id = to_host_id;
                }
                RuleOutcome::ReResolve => {
                    assert!(!fresh, "re-resolved twice for one event");
                    fresh = true;
                    re_resolves += 1;
                }
                RuleOutcome::RecheckUpstream { next_allowed } => {
                    // The host's getRepoStatus answers what it last said in an #account.
                    let account = self.accounts.get_mut(&did).expect("account");
                    assert!(account.upstream_recheck_after.is_none_or(|t| t <= NOW));
                    account.upstream_recheck_after = Some(next_allowed);
                }
                RuleOutcome::Hold => panic!("identities are all resolved here"),
                RuleOutcome::Validate => panic!("validation ran above"),
            }
        }
        panic!("the decision loop did not end for {did}");
    }
}

fn scenario(name: &str) -> Value {
    common::read_json(&format!("indigo/cmd/relay/testing/testdata/{name}"))
}

fn messages(s: &Value) -> Vec<(Bytes, bool, Value)> {
    s["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                Bytes::from(common::frame_bytes(&m["frame"])),
                m["drop"].as_bool().expect("drop"),
                m["frame"].clone(),
            )
        })
        .collect()
}

#[test]
fn every_scenario_forwards_and_drops_as_indigo_expects() {
    for name in common::RELAY_SCENARIOS {
        let s = scenario(name);
        let mut shard = MiniShard::new(&s, None);
        for (i, (msg, expect_drop, f)) in messages(&s).into_iter().enumerate() {
            let t = f["header"]["t"].as_str().expect("t");
            let Some(emitted) = shard.handle(&msg) else {
                assert!(
                    expect_drop,
                    "{name} #{i}: subscriber dropped a message to forward"
                );
                continue;
            };
            // From the PDS nothing re-resolves, except that an #identity always purges.
            let purges = usize::from(t == "#identity");
            assert_eq!(emitted.re_resolves, purges, "{name} #{i}");
            match (&emitted.outcome, expect_drop) {
                (Ok((out, _)), false) => {
                    // Every reader accepts what is forwarded.
                    frame::resequence(out, 1).expect("resequence");
                    match frame::decode_frame(out).expect("decode") {
                        Frame::Account(a) => {
                            let acct = &shard.accounts[&a.did];
                            assert_eq!(a.active, acct.is_active(), "{name} #{i}");
                            assert_eq!(a.status.as_deref(), acct.published_status());
                            assert_eq!(a.active, f["body"]["active"].as_bool().expect("a"));
                            assert_eq!(a.status.as_deref(), f["body"]["status"].as_str());
                        }
                        Frame::Identity(id) => {
                            // The declared handle is kept, so the frame is unchanged.
                            assert_eq!(id.handle.as_deref(), f["body"]["handle"].as_str());
                            assert_eq!(out, &msg, "{name} #{i}");
                        }
                        _ => assert_eq!(out, &msg, "{name} #{i}: {t} forwarded as received"),
                    }
                }
                (Err(reason), true) => {
                    assert!(
                        matches!(
                            reason,
                            DropReason::StaleRev
                                | DropReason::AccountInactive
                                | DropReason::Invalid(_)
                        ),
                        "{name} #{i}: {reason:?}"
                    );
                }
                (got, want_drop) => panic!("{name} #{i} {t}: {got:?}, drop expected: {want_drop}"),
            }
        }
    }
}

#[test]
fn inactive_account_is_rechecked_once_per_interval() {
    let s = scenario("deactivation.json");
    let mut shard = MiniShard::new(&s, None);
    let msgs = messages(&s);
    for (msg, _, _) in &msgs[..2] {
        shard.handle(msg).expect("handled");
    }
    let acct = shard.accounts.values().next().expect("account").clone();
    assert_eq!(acct.upstream_status, "deactivated");
    assert_eq!(acct.upstream_recheck_after, None);
    let dropped = shard.handle(&msgs[2].0).expect("handled");
    assert!(matches!(dropped.outcome, Err(DropReason::AccountInactive)));
    let after = shard.accounts.values().next().expect("account");
    assert_eq!(
        after.upstream_recheck_after,
        Some(NOW + shard_rules::UPSTREAM_RECHECK_INTERVAL_MICROS),
        "asked the host once, then dropped"
    );
}

#[test]
fn a_duplicate_sync_is_forwarded_and_noted() {
    let s = scenario("account_lifecycle.json");
    let mut shard = MiniShard::new(&s, None);
    let msgs = messages(&s);
    let sync = msgs
        .iter()
        .position(|(_, _, f)| f["header"]["t"] == "#sync")
        .expect("a #sync");
    for (msg, _, _) in &msgs[..=sync] {
        shard.handle(msg).expect("handled");
    }
    // The same #sync again under a later upstream seq (as a PDS sends on reactivation).
    let again = Bytes::from(frame::resequence(&msgs[sync].0, 10_000).expect("reseq"));
    let emitted = shard.handle(&again).expect("handled");
    match emitted.outcome {
        Ok((out, note)) => {
            assert_eq!(out, again);
            assert_eq!(note, Some(Note::DuplicateSync));
        }
        Err(r) => panic!("duplicate #sync dropped: {r:?}"),
    }
}

#[test]
fn frames_from_a_host_that_is_not_the_pds_only_pass_as_identity() {
    for name in common::RELAY_SCENARIOS {
        let s = scenario(name);
        let mut shard = MiniShard::new(&s, Some("elsewhere.example.net"));
        for (i, (msg, _, f)) in messages(&s).into_iter().enumerate() {
            let Some(emitted) = shard.handle(&msg) else {
                continue;
            };
            if f["header"]["t"] == "#identity" {
                assert_eq!(emitted.re_resolves, 1, "{name} #{i}: #identity purges");
                assert!(
                    emitted.outcome.is_ok(),
                    "{name} #{i}: identity from any host"
                );
            } else {
                assert_eq!(emitted.re_resolves, 1, "{name} #{i}: re-resolved once");
                assert!(
                    matches!(emitted.outcome, Err(DropReason::HostMismatch)),
                    "{name} #{i}: {:?}",
                    emitted.outcome
                );
            }
        }
        assert!(
            shard.accounts.is_empty(),
            "{name}: no account created (no spidering)"
        );
    }
}

#[test]
fn a_stale_key_re_resolves_once_and_a_wrong_key_drops_bad_signature() {
    let s = scenario("post_lifecycle.json");
    let wrong = PrivateKey::generate(Curve::K256).public_key();

    // Rotated without #identity: the cached key fails, the fresh one verifies.
    let mut shard = MiniShard::new(&s, None);
    for id in shard.identities.values_mut() {
        id.cached_key = Some(wrong.clone());
    }
    for (i, (msg, _, _)) in messages(&s).into_iter().enumerate() {
        let emitted = shard.handle(&msg).expect("handled");
        assert!(emitted.outcome.is_ok(), "#{i}: {:?}", emitted.outcome);
        assert_eq!(emitted.re_resolves, 1, "#{i}");
    }

    // The DID document's key is wrong too: dropped after one re-resolve.
    let mut shard = MiniShard::new(&s, None);
    for id in shard.identities.values_mut() {
        id.key = wrong.clone();
    }
    for (i, (msg, _, _)) in messages(&s).into_iter().enumerate() {
        let emitted = shard.handle(&msg).expect("handled");
        assert!(
            matches!(emitted.outcome, Err(DropReason::BadSignature)),
            "#{i}: {:?}",
            emitted.outcome
        );
        assert_eq!(emitted.re_resolves, 1, "#{i}");
    }
}

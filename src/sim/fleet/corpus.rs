//! A pre-generated corpus: valid events (signed `#commit`s with their MST diffs, and in the
//! driver's shares [`ValidEvent::SHARES`] `#identity`, `#account` and signed `#sync`), built
//! before they are published and on every core, so that publishing one at run time costs a
//! re-sequence of its bytes under the host's next seq ([`SimPds::publish_resequenced`])
//! instead of a signature and a tree update on the driver's thread (which held the driver to
//! ~6,900 events/s: BENCHMARKS.md, session 4).
//!
//! Drawn as the [`super::EventDriver`] draws: a host by its share of the rate among the hosts
//! a relay can receive from, then one of its accounts uniformly, then what the event is.
//! Each account's events are
//! built in order on a copy of its repo ([`SimPds::repo_copy`]), which then replaces the
//! account's repo ([`SimPds::install_repo`]): the host's next commit of the account chains
//! from the corpus's last one, so a corpus must be published in full, in order, before the
//! account commits any other way. Revs are a millisecond apart within an account, from the
//! time of building, so even a busy account's chain stays far inside a relay's 5-minute
//! future-rev tolerance.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Fleet;
use super::driver::{ValidEvent, next_record_path};
use crate::atproto::frame::{AccountEvent, Frame, IdentityEvent, encode_frame};
use crate::atproto::tid::now_micros;
use crate::sim::{SimError, SimPds};
use crate::testkit::repo::{Change, EVENT_TIME};

/// An account, as (position in the hosts given, position in its host's accounts).
type AccountAt = (usize, usize);
/// An account and its events in a corpus, in order.
type Chain = (AccountAt, Vec<ValidEvent>);
/// An account and its commits, in order.
type BuiltChain = (AccountAt, Vec<Bytes>);

/// One host a corpus draws from.
#[derive(Clone)]
pub struct CorpusHost {
    /// Its index in [`Fleet::hosts`].
    pub index: usize,
    pub pds: SimPds,
    pub accounts: Arc<[String]>,
    pub share: f64,
}

impl CorpusHost {
    /// The hosts of `fleet` a relay can receive valid events from, with a share of the rate.
    pub fn of(fleet: &Fleet) -> Vec<CorpusHost> {
        fleet
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.spec.delivers() && h.spec.share > 0.0 && !h.accounts.is_empty())
            .map(|(index, h)| CorpusHost {
                index,
                pds: h.pds.clone(),
                accounts: h.accounts.clone().into(),
                share: h.spec.share,
            })
            .collect()
    }
}

/// One event of a corpus, encoded with seq 1.
#[derive(Debug, Clone)]
pub struct PreparedCommit {
    /// The host's index in [`Fleet::hosts`].
    pub host: usize,
    pub frame: Bytes,
}

/// Events to publish, in order.
#[derive(Debug, Default)]
pub struct Corpus {
    pub commits: Vec<PreparedCommit>,
    /// Wall time the building took.
    pub built_in: Duration,
}

impl Corpus {
    /// `count` events over `hosts`, drawn with `seed` and built on `threads` threads.
    pub fn generate(
        hosts: &[CorpusHost],
        count: usize,
        seed: u64,
        threads: usize,
    ) -> Result<Corpus, SimError> {
        let begun = Instant::now();
        if hosts.is_empty() || count == 0 {
            return Ok(Corpus::default());
        }
        let draws = draw(hosts, count, seed);
        // Each account's chain is built by one thread; accounts are dealt out largest
        // first to the least loaded thread, so the threads end together.
        let mut chains: HashMap<AccountAt, Vec<ValidEvent>> = HashMap::new();
        for &(key, kind) in &draws {
            chains.entry(key).or_default().push(kind);
        }
        let mut chains: Vec<Chain> = chains.into_iter().collect();
        chains.sort_unstable_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let threads = threads.max(1);
        let mut work: Vec<(usize, Vec<Chain>)> = vec![(0, Vec::new()); threads];
        for chain in chains {
            let least = work
                .iter_mut()
                .min_by_key(|(load, _)| *load)
                .expect("at least one thread");
            least.0 += chain.1.len();
            least.1.push(chain);
        }
        let built: Vec<Result<Vec<BuiltChain>, SimError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .iter()
                .map(|(_, chains)| scope.spawn(move || build_chains(hosts, chains)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a corpus thread panicked"))
                .collect()
        });
        let mut frames: HashMap<AccountAt, VecDeque<Bytes>> = HashMap::new();
        for part in built {
            for (key, chain) in part? {
                frames.insert(key, chain.into());
            }
        }
        let commits = draws
            .into_iter()
            .map(|(key, _)| PreparedCommit {
                host: hosts[key.0].index,
                frame: frames
                    .get_mut(&key)
                    .and_then(VecDeque::pop_front)
                    .expect("one frame built per draw"),
            })
            .collect();
        Ok(Corpus {
            commits,
            built_in: begun.elapsed(),
        })
    }

    pub fn len(&self) -> usize {
        self.commits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }

    /// Frame bytes held.
    pub fn bytes(&self) -> usize {
        self.commits.iter().map(|c| c.frame.len()).sum()
    }
}

/// The account and kind of each event, in publishing order.
fn draw(hosts: &[CorpusHost], count: usize, seed: u64) -> Vec<(AccountAt, ValidEvent)> {
    let mut cumulative = Vec::with_capacity(hosts.len());
    let mut total = 0.0;
    for h in hosts {
        total += h.share;
        cumulative.push(total);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let pick = rng.random_range(0.0..total);
            let host = cumulative
                .partition_point(|&c| c <= pick)
                .min(hosts.len() - 1);
            let account = rng.random_range(0..hosts[host].accounts.len());
            ((host, account), ValidEvent::draw(&mut rng))
        })
        .collect()
}

/// Builds each chain on a copy of its account's repo and installs the copy.
fn build_chains(hosts: &[CorpusHost], chains: &[Chain]) -> Result<Vec<BuiltChain>, SimError> {
    let mut out = Vec::with_capacity(chains.len());
    for ((host, account), kinds) in chains {
        let pds = &hosts[*host].pds;
        let did = &hosts[*host].accounts[*account];
        let mut repo = pds.repo_copy(did)?;
        let handle = pds.handle(did);
        // The first rev at now (or just after the account's last), the rest 1 ms apart:
        // `next_rev` adds a second, so the clock is set a second short of each rev.
        let mut rev_at = (repo.clock + 1).max(now_micros());
        let mut chain = Vec::with_capacity(kinds.len());
        for kind in kinds {
            if matches!(kind, ValidEvent::Commit | ValidEvent::Sync) {
                repo.clock = rev_at - 1_000_000;
                rev_at += 1_000;
            }
            let frame = match kind {
                ValidEvent::Commit => {
                    Frame::Commit(Box::new(repo.commit(&[Change::Create(next_record_path())])))
                }
                ValidEvent::Sync => Frame::Sync(repo.sync()),
                ValidEvent::Identity => Frame::Identity(IdentityEvent {
                    seq: 1,
                    did: did.clone(),
                    time: EVENT_TIME.into(),
                    handle: handle.clone(),
                }),
                ValidEvent::Account => Frame::Account(AccountEvent {
                    seq: 1,
                    did: did.clone(),
                    time: EVENT_TIME.into(),
                    active: true,
                    status: None,
                }),
            };
            chain.push(Bytes::from(encode_frame(&frame)?));
        }
        pds.install_repo(repo)?;
        out.push(((*host, *account), chain));
    }
    Ok(out)
}

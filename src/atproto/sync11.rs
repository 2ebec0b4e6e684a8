//! Sync 1.1 MST inversion of a `#commit` (PROTOCOL.md §5, check 8).
//!
//! Why inversion: a relay keeps no repository contents, yet must know that the ops of a commit
//! are exactly the change from `prevData` to `data`. The CAR slice carries the new tree's
//! changed nodes plus the neighbours needed to undo the ops; undoing them on that partial tree
//! must reproduce `prevData`. Anything the slice lacks is a failure ([`Sync11Error::MissingBlock`]),
//! never a silent pass. Ops that cannot be inverted because they predate sync 1.1 (update or
//! delete without `prev`) produce [`InversionOutcome::Legacy`], which is neither a pass nor an
//! invalid message: the validator applies its legacy policy.
//!
//! Checks run in a fixed order so the first failing check names the reason: op count, action
//! and path syntax, op shape, duplicate paths, tree load, record presence, legacy ops, inversion,
//! root comparison.

use std::collections::HashSet;

use super::car::BlockMap;
use super::cid::Cid;
use super::mst::{Mst, MstError};

/// Most ops one commit may carry (lexicon `maxLength`).
pub const MAX_OPS: usize = 200;
/// Longest accepted repo path (the MST key limit).
pub const MAX_PATH_LEN: usize = 1024;
const MAX_COLLECTION_LEN: usize = 317;
const MAX_RKEY_LEN: usize = 512;

/// One op of a `#commit`, borrowed from wherever it was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOp<'a> {
    pub action: &'a str,
    pub path: &'a str,
    pub cid: Option<Cid>,
    pub prev: Option<Cid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Sync11Error {
    #[error("more than {MAX_OPS} ops")]
    TooManyOps,
    #[error("unknown op action")]
    BadAction,
    #[error("op path is not collection/rkey")]
    BadPath,
    #[error("create op must have cid and no prev")]
    CreateShape,
    #[error("delete op must have null cid and a prev")]
    DeleteShape,
    #[error("update op must have cid and prev")]
    UpdateShape,
    #[error("update op with cid equal to prev")]
    UpdateUnchanged,
    #[error("two ops on the same path")]
    DuplicatePath,
    #[error("block {0} needed for verification is missing from the slice")]
    MissingBlock(Cid),
    #[error("invalid MST in the slice: {0}")]
    Tree(MstError),
    #[error("record of a create/update op is not in the tree")]
    RecordNotInTree,
    #[error("record CID in the tree differs from the op's cid")]
    RecordMismatch,
    #[error("record block of a create/update op is missing from the slice")]
    RecordBlockMissing,
    #[error("inverting a create removed a different value")]
    InvertCreateMismatch,
    #[error("inverting an update replaced a different value")]
    InvertUpdateMismatch,
    #[error("inverting a delete found the key already present")]
    InvertDeleteExists,
    #[error("inverted root {computed} differs from prevData {expected}")]
    RootMismatch {
        computed: Box<Cid>,
        expected: Box<Cid>,
    },
}

impl Sync11Error {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Sync11Error::TooManyOps => "too-many-ops",
            Sync11Error::BadAction => "op-bad-action",
            Sync11Error::BadPath => "op-bad-path",
            Sync11Error::CreateShape => "op-create-shape",
            Sync11Error::DeleteShape => "op-delete-shape",
            Sync11Error::UpdateShape => "op-update-shape",
            Sync11Error::UpdateUnchanged => "op-update-unchanged",
            Sync11Error::DuplicatePath => "op-duplicate-path",
            Sync11Error::MissingBlock(_) => "inversion-missing-block",
            Sync11Error::Tree(MstError::OverBudget) => "inversion-mst-over-budget",
            Sync11Error::Tree(_) => "inversion-bad-mst",
            Sync11Error::RecordNotInTree => "record-not-in-tree",
            Sync11Error::RecordMismatch => "record-cid-mismatch",
            Sync11Error::RecordBlockMissing => "record-block-missing",
            Sync11Error::InvertCreateMismatch => "inversion-create-mismatch",
            Sync11Error::InvertUpdateMismatch => "inversion-update-mismatch",
            Sync11Error::InvertDeleteExists => "inversion-delete-exists",
            Sync11Error::RootMismatch { .. } => "inversion-root-mismatch",
        }
    }
}

impl From<MstError> for Sync11Error {
    fn from(e: MstError) -> Self {
        match e {
            MstError::MissingBlock(cid) => Sync11Error::MissingBlock(cid),
            other => Sync11Error::Tree(other),
        }
    }
}

/// Result of inverting a commit's ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InversionOutcome {
    /// The ops were inverted; the tree root before the commit is `prev_root`.
    Inverted { prev_root: Cid },
    /// An update or delete carries no `prev`: a pre-1.1 op that cannot be inverted. The record
    /// checks passed, nothing else was checked.
    Legacy,
}

/// Outcome of the full check 8 against a `prevData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sync11Outcome {
    Verified,
    Legacy,
    Failed(Sync11Error),
}

impl Sync11Outcome {
    /// Stable label for metrics ("ok", "legacy-op", or the failure's reason).
    pub fn reason(&self) -> &'static str {
        match self {
            Sync11Outcome::Verified => "ok",
            Sync11Outcome::Legacy => "legacy-op",
            Sync11Outcome::Failed(e) => e.reason(),
        }
    }
}

/// Minimal repo path shape: `<nsid-ish collection>/<record key>`, at most [`MAX_PATH_LEN`] bytes.
/// Full NSID/record-key validation belongs to `syntax`; this bound keeps hostile paths out of
/// the tree code.
pub fn check_path(path: &str) -> Result<(), Sync11Error> {
    if path.len() > MAX_PATH_LEN {
        return Err(Sync11Error::BadPath);
    }
    let (collection, rkey) = path.split_once('/').ok_or(Sync11Error::BadPath)?;
    let collection_ok = !collection.is_empty()
        && collection.len() <= MAX_COLLECTION_LEN
        && collection.contains('.')
        && !collection.starts_with('.')
        && !collection.ends_with('.')
        && collection
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let rkey_ok = !rkey.is_empty()
        && rkey.len() <= MAX_RKEY_LEN
        && rkey != "."
        && rkey != ".."
        && rkey
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:~-".contains(&b));
    if collection_ok && rkey_ok {
        Ok(())
    } else {
        Err(Sync11Error::BadPath)
    }
}

fn parse_action(action: &str) -> Result<Action, Sync11Error> {
    match action {
        "create" => Ok(Action::Create),
        "update" => Ok(Action::Update),
        "delete" => Ok(Action::Delete),
        _ => Err(Sync11Error::BadAction),
    }
}

/// Loads the partial tree at `data` from `blocks`, checks every op against it and inverts the
/// ops. Returns the root before the commit (or `Legacy`). Use this directly when the commit has
/// no `prevData` (first commit, lenient upstreams); otherwise use [`verify_commit`].
pub fn invert_commit(
    data: Cid,
    ops: &[CommitOp<'_>],
    blocks: &BlockMap,
) -> Result<InversionOutcome, Sync11Error> {
    if ops.len() > MAX_OPS {
        return Err(Sync11Error::TooManyOps);
    }
    let mut legacy = false;
    let mut parsed = Vec::with_capacity(ops.len());
    let mut paths = HashSet::with_capacity(ops.len());
    for op in ops {
        let action = parse_action(op.action)?;
        check_path(op.path)?;
        match action {
            Action::Create if op.cid.is_none() || op.prev.is_some() => {
                return Err(Sync11Error::CreateShape);
            }
            Action::Delete if op.cid.is_some() => return Err(Sync11Error::DeleteShape),
            Action::Update if op.cid.is_none() => return Err(Sync11Error::UpdateShape),
            Action::Update if op.prev.is_some() && op.cid == op.prev => {
                return Err(Sync11Error::UpdateUnchanged);
            }
            Action::Update | Action::Delete if op.prev.is_none() => legacy = true,
            _ => {}
        }
        if !paths.insert(op.path) {
            return Err(Sync11Error::DuplicatePath);
        }
        parsed.push((action, op));
    }

    if parsed.is_empty() {
        // An empty commit (new rev and signature only) leaves the tree as it was; the slice
        // need not carry the unchanged root node.
        return Ok(InversionOutcome::Inverted { prev_root: data });
    }
    let mut tree = Mst::load(data, blocks)?;
    for (action, op) in &parsed {
        if let (Action::Create | Action::Update, Some(cid)) = (action, op.cid) {
            match tree.get(op.path.as_bytes())? {
                None => return Err(Sync11Error::RecordNotInTree),
                Some(value) if value != cid => return Err(Sync11Error::RecordMismatch),
                Some(_) => {}
            }
            if !blocks.contains(&cid) {
                return Err(Sync11Error::RecordBlockMissing);
            }
        }
    }
    if legacy {
        return Ok(InversionOutcome::Legacy);
    }

    // Deletes first, then by path: a canonical order, so a given commit always fails the same way.
    parsed.sort_by(|(a, x), (b, y)| {
        let rank = |action: &Action| u8::from(*action != Action::Delete);
        rank(a).cmp(&rank(b)).then_with(|| x.path.cmp(y.path))
    });
    for (action, op) in &parsed {
        let key = op.path.as_bytes();
        match (action, op.cid, op.prev) {
            (Action::Create, Some(cid), _) => {
                if tree.remove(key)? != Some(cid) {
                    return Err(Sync11Error::InvertCreateMismatch);
                }
            }
            (Action::Update, Some(cid), Some(prev)) => {
                if tree.insert(key, prev)? != Some(cid) {
                    return Err(Sync11Error::InvertUpdateMismatch);
                }
            }
            (Action::Delete, None, Some(prev)) => {
                if tree.insert(key, prev)?.is_some() {
                    return Err(Sync11Error::InvertDeleteExists);
                }
            }
            // Shapes were checked above; these combinations cannot occur here.
            (Action::Create, ..) => return Err(Sync11Error::CreateShape),
            (Action::Update, ..) => return Err(Sync11Error::UpdateShape),
            (Action::Delete, ..) => return Err(Sync11Error::DeleteShape),
        }
    }
    Ok(InversionOutcome::Inverted {
        prev_root: tree.root_cid(),
    })
}

/// PROTOCOL.md §5 check 8: the commit's ops, inverted on the slice's partial tree at `data`,
/// must give back `prev_data`.
pub fn verify_commit(
    data: Cid,
    prev_data: Cid,
    ops: &[CommitOp<'_>],
    blocks: &BlockMap,
) -> Sync11Outcome {
    match invert_commit(data, ops, blocks) {
        Ok(InversionOutcome::Legacy) => Sync11Outcome::Legacy,
        Ok(InversionOutcome::Inverted { prev_root }) if prev_root == prev_data => {
            Sync11Outcome::Verified
        }
        Ok(InversionOutcome::Inverted { prev_root }) => {
            Sync11Outcome::Failed(Sync11Error::RootMismatch {
                computed: Box::new(prev_root),
                expected: Box::new(prev_data),
            })
        }
        Err(e) => Sync11Outcome::Failed(e),
    }
}

//! The replication planner: what to do for one dataset, as a value.
//!
//! Input: both sides' snapshots (guid, createtxg), the source's bookmarks,
//! the target's resume token and unsnapshotted changes, and the options.
//! Output: the steps to run, in order, or a typed conflict whose message
//! shows what each side has. The rules are syncoid's (`syncdataset`):
//! resume first; a missing target gets a full send of the oldest snapshot
//! and an `-I` to the newest; an existing one an incremental from the
//! newest snapshot both sides share (matched by guid), else from a source
//! bookmark whose guid matches a target snapshot, else nothing unless
//! `--force-delete`. Nothing here runs a command.

use crate::inventory::Snap;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// What a forced receive (`zfs receive -F`) will throw away on the target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollback {
    /// Target snapshots newer than the common base, destroyed by `-F`.
    pub destroys: Vec<String>,
    /// The target has changes since its newest snapshot, rolled back.
    pub discards_changes: bool,
}

impl Rollback {
    pub fn is_empty(&self) -> bool {
        self.destroys.is_empty() && !self.discards_changes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `zfs receive -A`: discard an interrupted receive (`--no-resume`).
    AbortPartialReceive,
    /// `zfs send -t TOKEN`: finish an interrupted receive. Plan again after.
    Resume {
        token: String,
    },
    /// `zfs snapshot` on the source.
    CreateSyncSnap {
        name: String,
    },
    /// `zfs destroy -r` of the target (`--force-delete`, no common snapshot).
    DestroyTarget,
    /// Full stream of `snap` into a new target.
    Full {
        snap: String,
    },
    /// Incremental from the clone's origin (`fs@snap` on the source).
    Clone {
        origin: String,
        snap: String,
    },
    /// `-I` (intermediates) or `-i` from `from` to `to`.
    Incremental {
        from: String,
        to: String,
        intermediates: bool,
        rollback: Rollback,
    },
    /// `-i fs#mark fs@to`.
    FromBookmark {
        mark: String,
        to: String,
        rollback: Rollback,
    },
    Hold {
        side: Side,
        snap: String,
    },
    Release {
        side: Side,
        snap: String,
    },
    /// `zfs bookmark fs@snap fs#snap` on the source (`--create-bookmark`).
    Bookmark {
        snap: String,
    },
    /// `--force-delete`: destroy target snapshots whose names clash with
    /// snapshots about to be received.
    DestroyClashing {
        snaps: Vec<String>,
    },
    /// Destroy these (old sync) snapshots on one side.
    Prune {
        side: Side,
        snaps: Vec<String>,
    },
}

impl Step {
    /// Steps that move data.
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            Step::Resume { .. }
                | Step::Full { .. }
                | Step::Clone { .. }
                | Step::Incremental { .. }
                | Step::FromBookmark { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// `--no-sync-snap` and the source has no snapshot to send.
    NoSourceSnapshots,
    /// The target exists but shares no snapshot (or bookmark) with the source.
    NoCommonSnapshot {
        source: Vec<String>,
        target: Vec<String>,
        /// The target is a pool's root, which `--force-delete` never
        /// destroys: the way out is another target.
        pool_root: bool,
    },
    /// `--no-rollback`, but reaching the source needs a rollback of the target.
    TargetDiverged { base: String, rollback: Rollback },
    /// Snapshots to send have the names of other (older) target snapshots.
    NameClash { names: Vec<String> },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        match self {
            Conflict::NoSourceSnapshots => {
                write!(f, "the source has no snapshots, and --no-sync-snap forbids creating one")
            }
            Conflict::NoCommonSnapshot { source, target, pool_root } => {
                write!(
                    f,
                    "the target exists but has no snapshot in common with the source (matched by guid), \
                     and no source bookmark matches a target snapshot.\n  source snapshots: {}\n  target snapshots: {}\n",
                    list(source),
                    list(target)
                )?;
                if *pool_root {
                    write!(
                        f,
                        "The target is a pool's root, which is never destroyed (not even with --force-delete): \
                         pick a new target inside the pool (replication creates it)."
                    )
                } else {
                    write!(
                        f,
                        "Replicating would need destroying the target: refusing. Use --force-delete to destroy and \
                         re-create it, or pick a new target (replication creates it)."
                    )
                }
            }
            Conflict::TargetDiverged { base, rollback } => {
                write!(f, "the target has diverged from the common snapshot {base}:")?;
                if !rollback.destroys.is_empty() {
                    write!(f, " newer target snapshots {} would be destroyed;", list(&rollback.destroys))?;
                }
                if rollback.discards_changes {
                    write!(f, " changes made on the target since its newest snapshot would be rolled back;")?;
                }
                write!(f, " --no-rollback forbids it")
            }
            Conflict::NameClash { names } => write!(
                f,
                "the target already has different snapshots (other guids) named {}: receiving would fail \
                 (\"destination already exists\"). --force-delete destroys those target snapshots first.",
                list(names)
            ),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub no_stream: bool,
    pub force_delete: bool,
    pub no_rollback: bool,
    pub resume: bool,
    pub keep_sync_snap: bool,
    pub create_bookmark: bool,
    pub use_hold: bool,
    /// `syncoid_[id_]hostname`: the sync snapshots this run may prune.
    pub sync_prefix: String,
    /// Snapshots are filtered (--include-snaps/--exclude-snaps): `-I` would
    /// carry excluded ones, so a chain of `-i` through the included ones is
    /// sent instead (syncoid's "simulating -I with filtered snaps").
    pub snaps_filtered: bool,
}

/// The target as the planner needs it.
#[derive(Debug, Clone, Default)]
pub struct TargetState {
    pub snaps: Vec<Snap>,
    pub resume_token: Option<String>,
    /// Bytes written since the target's newest snapshot.
    pub written: u64,
    pub is_pool_root: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Source snapshots, oldest first, already filtered by include/exclude.
    pub source: Vec<Snap>,
    pub source_marks: Vec<Snap>,
    /// `None` when the target does not exist.
    pub target: Option<TargetState>,
    /// Clone origin on the source (`fs@snap`), when clones are handled.
    pub origin: Option<String>,
    /// The sync snapshot to create, or `None` with `--no-sync-snap`.
    pub new_sync_snap: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Steps(Vec<Step>),
    /// The target already has the newest source snapshot.
    UpToDate {
        newest: String,
    },
}

/// Is `name` one of our sync snapshots (`PREFIX_YYYY-...`)?
pub fn is_own_sync_snap(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|date| {
            date.len() >= 10
                && date.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && date.as_bytes()[4] == b'-'
        })
}

fn rollback_after(target: &TargetState, base_guid: u64) -> Rollback {
    let base_txg = target
        .snaps
        .iter()
        .find(|s| s.guid == base_guid)
        .map(|s| s.createtxg)
        .unwrap_or(0);
    Rollback {
        destroys: target
            .snaps
            .iter()
            .filter(|s| s.createtxg > base_txg)
            .map(|s| s.name.clone())
            .collect(),
        discards_changes: target.written > 0,
    }
}

fn check_rollback(base: &str, rollback: Rollback, opts: &Options) -> Result<Rollback, Conflict> {
    if opts.no_rollback && !rollback.is_empty() {
        return Err(Conflict::TargetDiverged {
            base: base.to_string(),
            rollback,
        });
    }
    Ok(rollback)
}

/// Plans one dataset.
pub fn plan(input: &Input, opts: &Options) -> Result<Plan, Conflict> {
    let mut steps = Vec::new();
    let mut target = input.target.as_ref();
    if let Some(token) = target.and_then(|t| t.resume_token.clone()) {
        if opts.resume {
            return Ok(Plan::Steps(vec![Step::Resume { token }]));
        }
        steps.push(Step::AbortPartialReceive);
        // A first full receive that was cut: `zfs receive -A` removes the
        // dataset it was creating, so the target is new again.
        if target.is_some_and(|t| t.snaps.is_empty()) {
            target = None;
        }
    }
    let newest = match &input.new_sync_snap {
        Some(n) => {
            steps.push(Step::CreateSyncSnap { name: n.clone() });
            n.clone()
        }
        None => input
            .source
            .last()
            .map(|s| s.name.clone())
            .ok_or(Conflict::NoSourceSnapshots)?,
    };
    let mut base = None;
    match target {
        None => full_path(input, opts, &newest, &mut steps),
        Some(t) => match common(input, t) {
            Some(m) if m.name == newest => {
                if steps.is_empty() {
                    return Ok(Plan::UpToDate { newest });
                }
            }
            Some(m) => {
                let rollback = check_rollback(&m.name, rollback_after(t, m.guid), opts)?;
                incremental(input, opts, &m.name, &newest, rollback, &mut steps);
                base = Some(m.name.clone());
            }
            None => match bookmark_base(input, t) {
                Some((mark, tsnap)) => {
                    let rollback = check_rollback(&mark.name, rollback_after(t, tsnap.guid), opts)?;
                    from_bookmark(input, opts, mark, &newest, rollback, &mut steps);
                }
                None if opts.force_delete && !t.is_pool_root => {
                    steps.push(Step::DestroyTarget);
                    full_path(input, opts, &newest, &mut steps);
                }
                None => {
                    return Err(Conflict::NoCommonSnapshot {
                        source: input.source.iter().map(|s| s.name.clone()).collect(),
                        target: t.snaps.iter().map(|s| s.name.clone()).collect(),
                        pool_root: t.is_pool_root,
                    })
                }
            },
        },
    }
    resolve_clashes(input, opts, &mut steps)?;
    after_transfer(input, opts, &newest, base, &mut steps);
    Ok(Plan::Steps(steps))
}

/// Names the incremental steps will create on the target.
fn received_names(input: &Input, steps: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    for st in steps {
        match st {
            Step::Incremental {
                from,
                to,
                intermediates: true,
                ..
            } => {
                let start = input
                    .source
                    .iter()
                    .position(|s| s.name == *from)
                    .map(|i| i + 1)
                    .unwrap_or(0);
                out.extend(
                    input.source[start..]
                        .iter()
                        .map(|s| s.name.clone())
                        .take_while(|n| n != to),
                );
                out.push(to.clone());
            }
            Step::Incremental { to, .. } | Step::FromBookmark { to, .. } => out.push(to.clone()),
            _ => {}
        }
    }
    out
}

/// Target snapshots that share a name (not a guid) with one we will send,
/// and that the forced receive's rollback does not remove anyway.
fn resolve_clashes(input: &Input, opts: &Options, steps: &mut Vec<Step>) -> Result<(), Conflict> {
    let Some(t) = &input.target else {
        return Ok(());
    };
    if steps.contains(&Step::DestroyTarget) {
        return Ok(());
    }
    let rolled_back: Vec<&String> = steps
        .iter()
        .flat_map(|s| match s {
            Step::Incremental { rollback, .. } | Step::FromBookmark { rollback, .. } => {
                rollback.destroys.iter().collect()
            }
            _ => Vec::new(),
        })
        .collect();
    let names = received_names(input, steps);
    let clashing: Vec<String> = t
        .snaps
        .iter()
        .filter(|ts| names.contains(&ts.name) && !rolled_back.contains(&&ts.name))
        .filter(|ts| {
            input
                .source
                .iter()
                .any(|s| s.name == ts.name && s.guid != ts.guid)
        })
        .map(|ts| ts.name.clone())
        .collect();
    if clashing.is_empty() {
        return Ok(());
    }
    if !opts.force_delete {
        return Err(Conflict::NameClash { names: clashing });
    }
    let at = steps
        .iter()
        .position(|s| s.is_transfer())
        .unwrap_or(steps.len());
    steps.insert(at, Step::DestroyClashing { snaps: clashing });
    Ok(())
}

/// The newest source snapshot the target also has (same guid).
fn common<'a>(input: &'a Input, t: &TargetState) -> Option<&'a Snap> {
    input
        .source
        .iter()
        .rev()
        .find(|s| t.snaps.iter().any(|x| x.guid == s.guid))
}

/// A source bookmark matching the newest possible target snapshot.
fn bookmark_base<'a>(input: &'a Input, t: &'a TargetState) -> Option<(&'a Snap, &'a Snap)> {
    t.snaps.iter().rev().find_map(|ts| {
        input
            .source_marks
            .iter()
            .find(|m| m.guid == ts.guid)
            .map(|m| (m, ts))
    })
}

fn full_path(input: &Input, opts: &Options, newest: &str, steps: &mut Vec<Step>) {
    let first = if opts.no_stream {
        newest.to_string()
    } else {
        input
            .source
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| newest.to_string())
    };
    match &input.origin {
        Some(origin) => steps.push(Step::Clone {
            origin: origin.clone(),
            snap: first.clone(),
        }),
        None => steps.push(Step::Full {
            snap: first.clone(),
        }),
    }
    if first != newest {
        incremental(input, opts, &first, newest, Rollback::default(), steps);
    }
}

/// `-I from to`, or with filtered snapshots a chain of `-i` through the
/// included snapshots in between; `--no-stream` is a single `-i`.
fn incremental(
    input: &Input,
    opts: &Options,
    from: &str,
    to: &str,
    rollback: Rollback,
    steps: &mut Vec<Step>,
) {
    if opts.no_stream || !opts.snaps_filtered {
        steps.push(Step::Incremental {
            from: from.to_string(),
            to: to.to_string(),
            intermediates: !opts.no_stream,
            rollback,
        });
        return;
    }
    let start = input
        .source
        .iter()
        .position(|s| s.name == from)
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut chain: Vec<&str> = input.source[start..]
        .iter()
        .map(|s| s.name.as_str())
        .take_while(|n| *n != to)
        .collect();
    chain.push(to);
    let mut prev = from.to_string();
    let mut rollback = Some(rollback);
    for next in chain {
        steps.push(Step::Incremental {
            from: prev,
            to: next.to_string(),
            intermediates: false,
            rollback: rollback.take().unwrap_or_default(),
        });
        prev = next.to_string();
    }
}

fn from_bookmark(
    input: &Input,
    opts: &Options,
    mark: &Snap,
    newest: &str,
    rollback: Rollback,
    steps: &mut Vec<Step>,
) {
    // A bookmark cannot be the base of -I: send to the next snapshot after
    // it with -i, then -I from there (syncoid's order).
    let next = if opts.no_stream {
        None
    } else {
        input
            .source
            .iter()
            .find(|s| s.createtxg >= mark.createtxg)
            .map(|s| s.name.clone())
    };
    let to = next.clone().unwrap_or_else(|| newest.to_string());
    steps.push(Step::FromBookmark {
        mark: mark.name.clone(),
        to: to.clone(),
        rollback,
    });
    if to != newest {
        incremental(input, opts, &to, newest, Rollback::default(), steps);
    }
}

fn after_transfer(
    input: &Input,
    opts: &Options,
    newest: &str,
    base: Option<String>,
    steps: &mut Vec<Step>,
) {
    if opts.use_hold {
        for side in [Side::Source, Side::Target] {
            steps.push(Step::Hold {
                side,
                snap: newest.to_string(),
            });
            if let Some(b) = &base {
                steps.push(Step::Release {
                    side,
                    snap: b.clone(),
                });
            }
        }
    }
    match &input.new_sync_snap {
        None if opts.create_bookmark => steps.push(Step::Bookmark {
            snap: newest.to_string(),
        }),
        Some(new) if !opts.keep_sync_snap => {
            let old = |snaps: &[Snap]| -> Vec<String> {
                snaps
                    .iter()
                    .filter(|s| s.name != *new && is_own_sync_snap(&s.name, &opts.sync_prefix))
                    .map(|s| s.name.clone())
                    .collect()
            };
            let src = old(&input.source);
            let dst = input
                .target
                .as_ref()
                .map(|t| old(&t.snaps))
                .unwrap_or_default();
            if !src.is_empty() {
                steps.push(Step::Prune {
                    side: Side::Source,
                    snaps: src,
                });
            }
            if !dst.is_empty() {
                steps.push(Step::Prune {
                    side: Side::Target,
                    snaps: dst,
                });
            }
        }
        _ => {}
    }
}

/// `--delete-target-snapshots`: target snapshots the source no longer has
/// (by name, as syncoid compares), oldest first.
pub fn target_only(source: &[Snap], target: &[Snap]) -> Vec<String> {
    target
        .iter()
        .filter(|t| !source.iter().any(|s| s.name == t.name))
        .map(|t| t.name.clone())
        .collect()
}

/// Applies `--include-snaps` / `--exclude-snaps` (regex tests passed in).
pub fn filter_snaps(snaps: &[Snap], included: &dyn Fn(&str) -> bool) -> Vec<Snap> {
    snaps
        .iter()
        .filter(|s| included(&s.name))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;

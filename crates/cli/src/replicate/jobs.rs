//! `--jobs N`: up to N datasets of a run in flight at once, each on a
//! thread of its own. A dataset starts only once every dataset it depends
//! on has ended (whatever its outcome, as syncoid goes on after a failed
//! parent): its parent and ancestors in the plan (a child is received
//! into its parent) and its clone origin's dataset. Among the ready ones,
//! the first in the plan's order goes first, so `--jobs 1` is syncoid's
//! order exactly.

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::fatal;
use super::{location_of, sync_dataset, view, Ctx, DsError, Fatal, Inventory, Outcome, Run};
use crate::lock;
use crate::metrics::Dataset;
use crate::output::exit;

/// One dataset of the plan.
pub(crate) struct Item {
    pub(crate) src_fs: String,
    /// The clone origin (`fs@snap`) when it is replicated in the same run.
    pub(crate) origin: Option<String>,
    pub(crate) dst_fs: String,
}

/// For each item, the earlier items it must wait for.
pub(crate) fn dependencies(items: &[Item]) -> Vec<Vec<usize>> {
    items
        .iter()
        .map(|it| {
            let origin_fs = it
                .origin
                .as_deref()
                .and_then(|o| o.split_once('@'))
                .map(|(fs, _)| fs);
            items
                .iter()
                .enumerate()
                .filter(|(_, other)| {
                    let ancestor = it
                        .src_fs
                        .strip_prefix(other.src_fs.as_str())
                        .is_some_and(|rest| rest.starts_with('/'));
                    ancestor || origin_fs == Some(other.src_fs.as_str())
                })
                .map(|(j, _)| j)
                .collect()
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Waiting,
    Running,
    Ended,
}

/// The scheduler's book, under one lock.
struct Book {
    state: Vec<State>,
    results: Vec<Option<Dataset>>,
    /// A failure that ends the run: no dataset starts after it.
    fatal: Option<Fatal>,
}

impl Book {
    /// The first waiting item whose dependencies have all ended.
    fn ready(&self, deps: &[Vec<usize>]) -> Option<usize> {
        (0..self.state.len()).find(|&i| {
            self.state[i] == State::Waiting
                && deps[i].iter().all(|&d| self.state[d] == State::Ended)
        })
    }

    fn waiting(&self) -> bool {
        self.state.contains(&State::Waiting)
    }
}

/// Replicates every item, up to `jobs` at once; each one's record in the
/// plan's order, or the failure that ended the run.
pub(crate) fn run_all(
    run: &Run,
    items: &[Item],
    inventories: (&Inventory, Option<&Inventory>),
) -> Result<Vec<Dataset>, Fatal> {
    let deps = dependencies(items);
    let book = Mutex::new(Book {
        state: vec![State::Waiting; items.len()],
        results: (0..items.len()).map(|_| None).collect(),
        fatal: None,
    });
    let changed = Condvar::new();
    let count = items.len();
    let worker = || {
        // This thread's connections to the hosts were started early.
        let mut warmed = false;
        loop {
            let i = {
                let mut b = lock(&book);
                loop {
                    if b.fatal.is_some() || !b.waiting() {
                        return;
                    }
                    if let Some(i) = b.ready(&deps) {
                        b.state[i] = State::Running;
                        break i;
                    }
                    // Waiting for a parent: once the run's transfers need
                    // agents, this thread starts its own connections to the
                    // hosts meanwhile, not when its first dataset is ready.
                    if !warmed && run.warm.load(Ordering::Relaxed) {
                        drop(b);
                        run.warm_up();
                        warmed = true;
                        b = lock(&book);
                        continue;
                    }
                    b = changed
                        .wait_timeout(b, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            run.progress.dataset(i + 1, count);
            let r = one(run, &items[i], inventories);
            run.progress.dataset_ended();
            let mut b = lock(&book);
            b.state[i] = State::Ended;
            match r {
                Ok(d) => b.results[i] = Some(d),
                Err(f) => {
                    b.fatal.get_or_insert(f);
                }
            }
            changed.notify_all();
        }
    };
    // A dry run prints each dataset's commands as one block, in order.
    let jobs = if run.s.args.dry_run {
        1
    } else {
        run.s.jobs.clamp(1, count.max(1))
    };
    std::thread::scope(|scope| {
        let worker = &worker;
        for k in 0..jobs {
            scope.spawn(move || {
                // Each thread's remote commands go through ssh masters of
                // its own.
                crate::host::use_master(k);
                worker()
            });
        }
    });
    let b = book.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = b.fatal {
        return Err(f);
    }
    Ok(b.results.into_iter().flatten().collect())
}

/// What became of one dataset: its outcome (the metrics' word) and the
/// error, if any.
fn outcome(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    r: Result<Outcome, DsError>,
) -> Result<(&'static str, Option<String>), Fatal> {
    let out = &ctx.out;
    Ok(match r {
        Ok(Outcome::Replicated) => ("replicated", None),
        Ok(Outcome::UpToDate) => ("up_to_date", None),
        Ok(Outcome::Skipped) => ("skipped", None),
        Ok(Outcome::Busy) => ("busy", None),
        Err(DsError::Busy(why)) => {
            out.warn(&format!(
                "Cannot sync now: {dst_fs} is being replicated from {src_fs} by another syncoid-rsync --rsync run: {why}. Leaving the transfer to it."
            ));
            ("busy", None)
        }
        Err(DsError::CannotRun(e)) => {
            // Found before the first change; the same for every dataset.
            return Err(fatal(
                exit::UNAVAILABLE,
                format!("pre-flight failed:\n  {}", e.replace('\n', "\n  ")),
            ));
        }
        Err(e) if e.link_lost() => {
            out.critical(&format!(
                "{src_fs} -> {dst_fs}: {e}\n  the link was lost: a later run goes on from where this one stopped"
            ));
            ("link_lost", Some(e.to_string()))
        }
        Err(e) => {
            out.critical(&format!("{} -> {}: {e}", src_fs, dst_fs));
            ("failed", Some(e.to_string()))
        }
    })
}

/// One dataset of the plan, start to end: its outcome for the summary.
fn one(
    run: &Run,
    item: &Item,
    (src_inv, dst_inv): (&Inventory, Option<&Inventory>),
) -> Result<crate::metrics::Dataset, Fatal> {
    let ctx = Ctx::new(run);
    let s = run.s;
    let (src_fs, dst_fs) = (item.src_fs.as_str(), item.dst_fs.as_str());
    let src = view(Some(src_inv), src_fs);
    let dst = view(dst_inv, dst_fs);
    let t = std::time::Instant::now();
    let r = sync_dataset(&ctx, src_fs, dst_fs, item.origin.clone(), src, dst);
    let (status, error) = outcome(&ctx, src_fs, dst_fs, r)?;
    ctx.progress.json(
        "dataset_done",
        serde_json::json!({
            "source": src_fs, "target": dst_fs, "status": status, "error": error,
            "bytes": ctx.bytes.get(),
            "seconds": (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        }),
    );
    Ok(crate::metrics::Dataset {
        source: location_of(&s.source_host, src_fs),
        target: location_of(&s.target_host, dst_fs),
        outcome: status,
        // Counted with --rsync, or by standard mode's meter.
        bytes: (s.args.rsync || ctx.metered()).then(|| ctx.bytes.get()),
        seconds: t.elapsed().as_secs_f64(),
        reconnects: ctx.reconnects.get(),
        resent_bytes: ctx.resent.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(fs: &str, origin: Option<&str>) -> Item {
        Item {
            src_fs: fs.into(),
            origin: origin.map(Into::into),
            dst_fs: fs.replace("tank", "backup"),
        }
    }

    #[test]
    fn a_dataset_waits_for_its_ancestors_and_its_clone_origin_only() {
        let items = [
            item("tank", None),
            item("tank/a", None),
            item("tank/a/b", None),
            item("tank/ab", None),
            item("tank/c", Some("tank/a/b@s1")),
        ];
        let deps = dependencies(&items);
        assert_eq!(deps[0], Vec::<usize>::new());
        assert_eq!(deps[1], vec![0]);
        assert_eq!(deps[2], vec![0, 1]);
        // tank/ab is not a child of tank/a.
        assert_eq!(deps[3], vec![0]);
        assert_eq!(deps[4], vec![0, 2]);
    }

    #[test]
    fn the_first_ready_item_in_plan_order_goes_first() {
        let items = [
            item("tank/a", None),
            item("tank/a/x", None),
            item("tank/b", None),
        ];
        let deps = dependencies(&items);
        let mut b = Book {
            state: vec![State::Waiting; 3],
            results: vec![None, None, None],
            fatal: None,
        };
        assert_eq!(b.ready(&deps), Some(0));
        b.state[0] = State::Running;
        // tank/a/x waits for tank/a: tank/b overtakes it.
        assert_eq!(b.ready(&deps), Some(2));
        b.state[2] = State::Running;
        assert_eq!(b.ready(&deps), None);
        b.state[0] = State::Ended;
        assert_eq!(b.ready(&deps), Some(1));
    }
}

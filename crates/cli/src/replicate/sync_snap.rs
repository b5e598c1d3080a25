//! Sync snapshots: their name for now, whether a dataset gets one
//! (`syncoid:sync`), and `--atomic-sync-snap`'s one call for the whole
//! tree before the first send.

use std::collections::BTreeSet;

use super::{fatal, jobs, view, Ctx, Fatal, Run, View};
use crate::config::Settings;
use crate::output::exit;
use syncoid_rsync_core::inventory::Inventory;
use syncoid_rsync_core::plan::Side;
use syncoid_rsync_core::syncsnap;

fn now_local() -> syncsnap::LocalTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = now as libc::time_t;
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    let offset = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm.tm_gmtoff as i32
    };
    syncsnap::local_time(now, offset)
}

/// Why a dataset is left out (its `syncoid:sync` property), in syncoid's
/// words; None when it is replicated.
pub(super) fn skipped(s: &Settings, src_fs: &str, src: &View) -> Option<String> {
    match src.sync.as_deref() {
        None | Some("true") | Some("-") | Some("") => None,
        Some("false") => Some(format!(
            "Skipping dataset (syncoid:sync=false): {src_fs}..."
        )),
        Some(hosts) => (!hosts.split(',').any(|h| h == s.hostname)).then(|| {
            format!(
                "Skipping dataset (syncoid:sync doesn't include {}): {src_fs}...",
                s.hostname
            )
        }),
    }
}

/// `--atomic-sync-snap`: one sync snapshot for every dataset of the plan
/// that gets one, taken in one `zfs snapshot` call (ZFS takes them in one
/// transaction group: one instant for the tree). A failure ends the run
/// before anything was sent.
pub(super) fn snapshot_together(
    run: &Run,
    items: &[jobs::Item],
    src_inv: &Inventory,
) -> Result<Option<(String, BTreeSet<String>)>, Fatal> {
    let s = run.s;
    let views: Vec<(&str, View)> = items
        .iter()
        .map(|i| (i.src_fs.as_str(), view(Some(src_inv), &i.src_fs)))
        .filter(|(fs, v)| skipped(s, fs, v).is_none())
        .collect();
    let name = loop {
        let name = syncsnap::name(s.args.identifier.as_deref(), &s.hostname, &now_local());
        if !views
            .iter()
            .any(|(_, v)| v.snaps.iter().any(|x| x.name == name))
        {
            break name;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if views.is_empty() || !s.snap_included(&name) {
        return Ok(None);
    }
    let snaps: Vec<String> = views.iter().map(|(fs, _)| format!("{fs}@{name}")).collect();
    let mut args = vec!["snapshot"];
    args.extend(snaps.iter().map(String::as_str));
    let ctx = Ctx::new(run);
    ctx.zfs_run(Side::Source, &args).map_err(|e| {
        fatal(
            exit::FAILED,
            format!("--atomic-sync-snap: cannot take the sync snapshots: {e}"),
        )
    })?;
    run.out.info(&format!(
        "took sync snapshot {name} of {} datasets at once",
        snaps.len()
    ));
    Ok(Some((
        name,
        views.iter().map(|(fs, _)| fs.to_string()).collect(),
    )))
}

impl Run<'_> {
    /// `--atomic-sync-snap`: the sync snapshot already taken for `fs`,
    /// when the source as last listed does not show it yet.
    pub(super) fn taken_together(&self, fs: &str, src: &View) -> Option<&str> {
        let (name, of) = self.together.as_ref()?;
        (of.contains(fs) && !src.snaps.iter().any(|x| x.name == *name)).then_some(name.as_str())
    }
}

/// The sync snapshot name for now; if the source already has one with that
/// name (a run within the same second), waits for the next second rather
/// than fail on `dataset already exists` as syncoid does.
pub(super) fn fresh_sync_name(ctx: &Ctx, src_fs: &str, src: &View) -> String {
    if let Some(name) = ctx.taken_together(src_fs, src) {
        return name.to_string();
    }
    loop {
        let name = syncsnap::name(
            ctx.s.args.identifier.as_deref(),
            &ctx.s.hostname,
            &now_local(),
        );
        if !src.snaps.iter().any(|s| s.name == name) {
            return name;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

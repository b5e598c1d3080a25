//! Executing one dataset's plan, step by step: sync snapshots, holds,
//! bookmarks, pruning, the guarded destroy of `--force-delete`, and each
//! send (standard mode's pipeline here; `--rsync` hands the stream to
//! `agents`). What to do was decided by the planner; this only does it.

use super::*;
use crate::rsync::dataset::rsync_transfer;

pub(super) fn run_step(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    src: &View,
    step: &Step,
) -> Result<(), DsError> {
    let out = &ctx.out;
    match step {
        Step::AbortPartialReceive => {
            out.debug(&format!("reset partial receive state of {dst_fs}..."));
            out.warn(&format!(
                "resetting partially receive state (--no-resume): discarding the interrupted receive on {dst_fs}"
            ));
            ctx.zfs_run(Side::Target, &["receive", "-A", dst_fs])?;
        }
        Step::CreateSyncSnap { name } => {
            if ctx.taken_together(src_fs, src) == Some(name.as_str()) {
                out.debug(&format!(
                    "{src_fs}@{name} was taken with the others (--atomic-sync-snap)"
                ));
            } else {
                ctx.zfs_run(Side::Source, &["snapshot", &format!("{src_fs}@{name}")])?;
            }
        }
        Step::DestroyTarget => destroy_target(ctx, dst_fs)?,
        Step::DestroyClashing { snaps } => {
            let list = snaps
                .iter()
                .map(|n| format!("{dst_fs}@{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            out.warn(&format!(
                "--force-delete: destroying target snapshots whose names the source reuses for other snapshots: {list}"
            ));
            ctx.zfs_run(
                Side::Target,
                &["destroy", &format!("{dst_fs}@{}", snaps.join(","))],
            )?;
        }
        Step::Hold { side, snap } | Step::Release { side, snap } => {
            let verb = if matches!(step, Step::Hold { .. }) {
                "hold"
            } else {
                "release"
            };
            let fs = if *side == Side::Source {
                src_fs
            } else {
                dst_fs
            };
            if let Err(e) = ctx.zfs_run(*side, &[verb, &ctx.s.hold_tag(), &format!("{fs}@{snap}")])
            {
                out.warn(&format!("zfs {verb} failed: {e}"));
            }
        }
        Step::Bookmark { snap } => create_bookmark(ctx, src_fs, src, snap)?,
        Step::Prune { side, snaps } => {
            let fs = if *side == Side::Source {
                src_fs
            } else {
                dst_fs
            };
            for chunk in snaps.chunks(50) {
                let target = format!("{fs}@{}", chunk.join(","));
                if let Some(later) = &ctx.later {
                    // A tree's prunes go in one call per host at its end.
                    crate::lock(later).push(super::later::Prune {
                        side: *side,
                        argv: ctx.zfs(*side, &["destroy", &target]),
                    });
                    continue;
                }
                if let Err(e) = ctx.zfs_run(*side, &["destroy", &target]) {
                    out.warn(&format!(
                        "pruning old sync snapshots on the {side} failed: {e}"
                    ));
                }
            }
        }
        transfer_step => send_step(ctx, src_fs, dst_fs, src, transfer_step)?,
    }
    Ok(())
}

fn destroy_target(ctx: &Ctx, dst_fs: &str) -> Result<(), DsError> {
    if !dst_fs.contains('/') {
        return Err(DsError::Other(format!(
            "refusing to destroy pool root {dst_fs}"
        )));
    }
    // `destroy -n` changes nothing: a dry run lists what it would destroy
    // as completely as the warning before a real run.
    let argv = ctx.zfs(Side::Target, &["destroy", "-r", "-n", "-v", dst_fs]);
    let listing = ctx.host(Side::Target).run_ok_read(&argv)?;
    let doomed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("would destroy "))
        .collect();
    ctx.out.info(&format!(
        "Removing {dst_fs} because no matching snapshots were found"
    ));
    ctx.out.warn(&format!(
        "--force-delete: {dst_fs} shares no snapshot with the source; destroying it and everything in it: {}",
        if doomed.is_empty() { dst_fs.to_string() } else { doomed.join(", ") }
    ));
    ctx.zfs_run(Side::Target, &["destroy", "-r", dst_fs])?;
    Ok(())
}

fn create_bookmark(ctx: &Ctx, src_fs: &str, src: &View, snap: &str) -> Result<(), DsError> {
    let first = ctx.zfs_run(
        Side::Source,
        &[
            "bookmark",
            &format!("{src_fs}@{snap}"),
            &format!("{src_fs}#{snap}"),
        ],
    );
    let Err(e) = first else { return Ok(()) };
    let guid = src
        .snaps
        .iter()
        .find(|s| s.name == snap)
        .map(|s| s.guid)
        .unwrap_or(0);
    if src.marks.iter().any(|m| m.name == snap && m.guid == guid) {
        ctx.out.info("bookmark already exists, skipping creation");
        return Ok(());
    }
    let suffix: String = guid.to_string().chars().take(6).collect();
    ctx.out.info(&format!(
        "bookmark creation failed ({e}), retrying with guid based suffix ({suffix})..."
    ));
    ctx.zfs_run(
        Side::Source,
        &[
            "bookmark",
            &format!("{src_fs}@{snap}"),
            &format!("{src_fs}#{snap}{suffix}"),
        ],
    )?;
    Ok(())
}

fn describe_rollback(dst_fs: &str, r: &Rollback) -> String {
    let mut parts = Vec::new();
    if !r.destroys.is_empty() {
        parts.push(format!(
            "destroys target snapshots {}",
            r.destroys
                .iter()
                .map(|s| format!("{dst_fs}@{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if r.discards_changes {
        parts.push(format!(
            "rolls back changes made on {dst_fs} since its newest snapshot"
        ));
    }
    format!(
        "the forced receive (zfs receive -F) {}",
        parts.join(" and ")
    )
}

fn send_step(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
    src: &View,
    step: &Step,
) -> Result<(), DsError> {
    let s = ctx.s;
    let snap = |n: &str| format!("{src_fs}@{n}");
    let (what, rollback, label) = match step {
        Step::Full { snap: n } => (
            SendWhat::Full { snap: snap(n) },
            Rollback::default(),
            if s.args.no_stream {
                format!(
                    "--no-stream selected; sending newest full snapshot {} to new target filesystem {dst_fs}",
                    snap(n)
                )
            } else {
                format!(
                    "Sending oldest full snapshot {} to new target filesystem {dst_fs}",
                    snap(n)
                )
            },
        ),
        Step::Clone { origin, snap: n } => (
            SendWhat::Incremental {
                from: origin.clone(),
                to: snap(n),
                intermediates: false,
            },
            Rollback::default(),
            format!("Clone is recreated on target {dst_fs} based on {origin}"),
        ),
        Step::Incremental {
            from,
            to,
            intermediates,
            rollback,
        } => (
            SendWhat::Incremental {
                from: snap(from),
                to: snap(to),
                intermediates: *intermediates,
            },
            rollback.clone(),
            format!("Sending incremental {} ... {to} to {dst_fs}", snap(from)),
        ),
        Step::FromBookmark { mark, to, rollback } => (
            SendWhat::Incremental {
                from: format!("{src_fs}#{mark}"),
                to: snap(to),
                intermediates: false,
            },
            rollback.clone(),
            format!("Sending incremental {src_fs}#{mark} ... {to} to {dst_fs}"),
        ),
        Step::Resume { token } => (
            SendWhat::Resume {
                token: token.clone(),
            },
            Rollback::default(),
            format!("Resuming interrupted zfs send/receive from {src_fs} to {dst_fs}"),
        ),
        other => {
            return Err(DsError::Other(format!(
                "internal: {other:?} is not a transfer"
            )))
        }
    };
    // As syncoid: incremental receives are forced (-F) unless --no-rollback,
    // because a mounted target is "modified" by atime updates that `written`
    // does not show yet. What the rollback destroys is known and printed.
    let force = !s.args.no_rollback
        && matches!(
            step,
            Step::Incremental { .. } | Step::FromBookmark { .. } | Step::Resume { .. }
        );
    if !rollback.is_empty() {
        ctx.out.warn(&describe_rollback(dst_fs, &rollback));
    }
    let mut set_props = Vec::new();
    if s.args.preserve_properties {
        set_props = local_properties(ctx, src_fs)?;
    } else if s.args.preserve_recordsize && !src.is_volume {
        if let Some(rs) = &src.recordsize {
            set_props.push(("recordsize".to_string(), rs.clone()));
        }
    }
    let recv = Receive {
        resumable: !s.args.no_resume || s.args.rsync,
        force,
        set_props,
    };
    let send_argv = argv::send(&what, &s.send_opts, s.source_sudo);
    let recv_argv = argv::receive(dst_fs, &recv, &s.recv_opts, s.target_sudo);
    // The estimate (`zfs send -nvP`, a call on the source) is for the
    // "(~ SIZE)" line and the progress display: with --quiet neither is
    // shown, and a tree of many datasets saves a call on each.
    let shown = ctx.progress.face() != crate::progress::Face::Quiet;
    let size = if ctx.dry() || !shown {
        0
    } else {
        estimate(ctx, &what)
    };
    let hosts = Hosts {
        source: &s.source_host,
        target: &s.target_host,
    };
    let pipe = PipeOpts {
        compress: s.compress,
        mbuffer_size: s.args.mbuffer_size.clone(),
        source_bwlimit: ctx.rate_share(&s.args.source_bwlimit),
        target_bwlimit: ctx.rate_share(&s.args.target_bwlimit),
        pv_options: None,
        meter: ctx.metered(),
        source_remote: s.source_host.is_remote(),
        target_remote: s.target_host.is_remote(),
        direct: s.direct.clone(),
    };
    let segments = argv::pipeline(
        send_argv.clone(),
        recv_argv.clone(),
        size,
        &pipe,
        &ctx.tools,
    );
    if ctx.dry() {
        let how = if s.args.rsync {
            // No pipeline: agents hold zfs send and zfs receive open and
            // chunks travel between them.
            format!(
                "{}  (sender agent on {})  =>  verified chunks  =>  {}  (receiver agent on {})",
                shell::join(&send_argv),
                s.source_host.label(),
                shell::join(&recv_argv),
                s.target_host.label()
            )
        } else {
            transfer::describe(&segments, &hosts)
        };
        ctx.out.plain(&format!("  {how}"));
        return Ok(());
    }
    let est = if size == 0 {
        "UNKNOWN".to_string()
    } else {
        readable(size)
    };
    // syncoid's punctuation: its --no-stream full send reads
    // "...: (~ SIZE)", every other send "... (~ SIZE):".
    if s.args.no_stream && matches!(step, Step::Full { .. }) {
        ctx.out.info(&format!("{label}: (~ {est})"));
    } else {
        ctx.out.info(&format!("{label} (~ {est}):"));
    }
    let kind = match what {
        SendWhat::Full { .. } => "full",
        SendWhat::Incremental { .. } => "incremental",
        SendWhat::Resume { .. } => "resume",
    };
    ctx.progress.json(
        "dataset_start",
        serde_json::json!({
            "source": src_fs, "target": dst_fs, "kind": kind,
            "estimate_bytes": (size > 0).then_some(size),
        }),
    );
    if s.args.rsync {
        return rsync_transfer(ctx, src_fs, dst_fs, &send_argv, &recv_argv, size);
    }
    ctx.out.debug(&transfer::describe(&segments, &hosts));
    ctx.progress.start_stream(src_fs, dst_fs, size);
    interrupt::doing(Some(interrupt::Doing::Stream {
        target: dst_fs.to_string(),
        resumable: recv.resumable,
    }));
    let result = transfer::run(&segments, &hosts, &ctx.progress);
    interrupt::doing(None);
    ctx.progress.end_stream(result.is_ok());
    let bytes = result.map_err(DsError::Cmd)?;
    ctx.bytes.set(ctx.bytes.get() + bytes);
    Ok(())
}

fn estimate(ctx: &Ctx, what: &SendWhat) -> u64 {
    let argv = argv::estimate(what, &ctx.s.send_opts, ctx.s.source_sudo);
    match ctx.s.source_host.run(&argv) {
        Ok(o) if o.status.success() => {
            argv::parse_estimate(&String::from_utf8_lossy(&o.stdout)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Locally set properties, less those zfs cannot set (syncoid's list).
fn local_properties(ctx: &Ctx, fs: &str) -> Result<Vec<(String, String)>, DsError> {
    const READONLY: &[&str] = &[
        "available",
        "compressratio",
        "createtxg",
        "creation",
        "clones",
        "defer_destroy",
        "encryptionroot",
        "filesystem_count",
        "keystatus",
        "guid",
        "logicalreferenced",
        "logicalused",
        "mounted",
        "objsetid",
        "origin",
        "receive_resume_token",
        "redact_snaps",
        "referenced",
        "refcompressratio",
        "snapshot_count",
        "type",
        "used",
        "usedbychildren",
        "usedbydataset",
        "usedbyrefreservation",
        "usedbysnapshots",
        "userrefs",
        "snapshots_changed",
        "volblocksize",
        "written",
        "version",
        "volsize",
        "casesensitivity",
        "normalization",
        "utf8only",
        "encryption",
    ];
    let argv = ctx.zfs(
        Side::Source,
        &[
            "get",
            "-s",
            "local",
            "-H",
            "-p",
            "-o",
            "property,value",
            "all",
            fs,
        ],
    );
    let listing = ctx.host(Side::Source).run_ok(&argv)?;
    Ok(listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(k, _)| !READONLY.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

pub(super) fn delete_target_snapshots(
    ctx: &Ctx,
    src_fs: &str,
    dst_fs: &str,
) -> Result<(), DsError> {
    let src = refresh(ctx, Side::Source, src_fs)?;
    let dst = refresh(ctx, Side::Target, dst_fs)?;
    let included = |n: &str| ctx.s.snap_included(n);
    let doomed = plan::target_only(
        &plan::filter_snaps(&src.snaps, &included),
        &plan::filter_snaps(&dst.snaps, &included),
    );
    for chunk in doomed.chunks(50) {
        ctx.out.info(&format!(
            "--delete-target-snapshots: destroying {dst_fs}@{}",
            chunk.join(",")
        ));
        if let Err(e) = ctx.zfs_run(
            Side::Target,
            &["destroy", &format!("{dst_fs}@{}", chunk.join(","))],
        ) {
            ctx.out
                .warn(&format!("destroying target snapshots failed: {e}"));
        }
    }
    Ok(())
}

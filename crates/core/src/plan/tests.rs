use super::*;
use proptest::prelude::*;

fn s(name: &str, guid: u64, txg: u64) -> Snap {
    Snap {
        name: name.into(),
        guid,
        createtxg: txg,
        creation: txg,
    }
}

fn opts() -> Options {
    Options {
        resume: true,
        sync_prefix: "syncoid_h".into(),
        ..Options::default()
    }
}

const SYNC: &str = "syncoid_h_2026-11-27_12:00:00-GMT00:00";
const OLD_SYNC: &str = "syncoid_h_2026-11-26_12:00:00-GMT00:00";

fn input(source: Vec<Snap>, target: Option<Vec<Snap>>) -> Input {
    Input {
        source,
        target: target.map(|snaps| TargetState {
            snaps,
            ..TargetState::default()
        }),
        new_sync_snap: Some(SYNC.into()),
        ..Input::default()
    }
}

fn steps(p: Result<Plan, Conflict>) -> Vec<Step> {
    match p {
        Ok(Plan::Steps(s)) => s,
        other => panic!("expected steps, got {other:?}"),
    }
}

fn incr(from: &str, to: &str) -> Step {
    Step::Incremental {
        from: from.into(),
        to: to.into(),
        intermediates: true,
        rollback: Rollback::default(),
    }
}

#[test]
fn new_target_gets_oldest_full_then_intermediates() {
    let got = steps(plan(
        &input(vec![s("a", 1, 5), s("b", 2, 6)], None),
        &opts(),
    ));
    assert_eq!(
        got,
        vec![
            Step::CreateSyncSnap { name: SYNC.into() },
            Step::Full { snap: "a".into() },
            incr("a", SYNC),
        ]
    );
}

#[test]
fn new_target_with_no_stream_gets_only_the_newest() {
    let o = Options {
        no_stream: true,
        ..opts()
    };
    let got = steps(plan(&input(vec![s("a", 1, 5)], None), &o));
    assert_eq!(got[1], Step::Full { snap: SYNC.into() });
    assert_eq!(got.len(), 2);
}

#[test]
fn empty_source_full_sends_the_sync_snapshot() {
    let got = steps(plan(&input(vec![], None), &opts()));
    assert_eq!(
        got,
        vec![
            Step::CreateSyncSnap { name: SYNC.into() },
            Step::Full { snap: SYNC.into() }
        ]
    );
}

#[test]
fn no_sync_snap_and_no_snapshots_is_a_conflict() {
    let mut i = input(vec![], None);
    i.new_sync_snap = None;
    assert_eq!(plan(&i, &opts()), Err(Conflict::NoSourceSnapshots));
}

#[test]
fn incremental_from_newest_common_by_guid_not_name() {
    // The target's "b" has another guid: it is not common; "a" is.
    let i = input(
        vec![s("a", 1, 5), s("b", 2, 6)],
        Some(vec![s("a", 1, 3), s("b", 99, 4)]),
    );
    let got = steps(plan(&i, &opts()));
    assert_eq!(
        got[1],
        Step::Incremental {
            from: "a".into(),
            to: SYNC.into(),
            intermediates: true,
            rollback: Rollback {
                destroys: vec!["b".into()],
                discards_changes: false
            },
        }
    );
}

#[test]
fn renamed_target_snapshot_still_matches_by_guid() {
    let i = input(vec![s("a", 1, 5)], Some(vec![s("renamed", 1, 3)]));
    assert_eq!(steps(plan(&i, &opts()))[1], incr("a", SYNC));
}

#[test]
fn no_rollback_refuses_a_diverged_target() {
    let o = Options {
        no_rollback: true,
        ..opts()
    };
    let i = input(vec![s("a", 1, 5)], Some(vec![s("a", 1, 3), s("x", 7, 4)]));
    match plan(&i, &o) {
        Err(Conflict::TargetDiverged { base, rollback }) => {
            assert_eq!(base, "a");
            assert_eq!(rollback.destroys, ["x"]);
        }
        other => panic!("{other:?}"),
    }
    let mut i = input(vec![s("a", 1, 5)], Some(vec![s("a", 1, 3)]));
    i.target.as_mut().unwrap().written = 4096;
    let err = plan(&i, &o).unwrap_err();
    assert!(
        err.to_string().contains("changes made on the target"),
        "{err}"
    );
}

#[test]
fn up_to_date_without_sync_snap() {
    let mut i = input(vec![s("a", 1, 5)], Some(vec![s("a", 1, 3)]));
    i.new_sync_snap = None;
    assert_eq!(plan(&i, &opts()), Ok(Plan::UpToDate { newest: "a".into() }));
}

#[test]
fn bookmark_fallback_with_intermediate_snapshots() {
    // syncoid test 001: source kept a bookmark of "a", destroyed snapshot "a".
    let mut i = input(vec![s("b", 2, 6), s("c", 3, 7)], Some(vec![s("a", 1, 3)]));
    i.source_marks = vec![s("a", 1, 5)];
    let got = steps(plan(&i, &opts()));
    assert_eq!(
        got[1..3],
        [
            Step::FromBookmark {
                mark: "a".into(),
                to: "b".into(),
                rollback: Rollback::default()
            },
            incr("b", SYNC),
        ]
    );
}

#[test]
fn bookmark_fallback_without_intermediates_and_zero_names() {
    // syncoid tests 002 and 013: no snapshot after the bookmark; names "0".
    let mut i = input(vec![], Some(vec![s("0", 1, 3)]));
    i.source_marks = vec![s("0", 1, 5)];
    let got = steps(plan(&i, &opts()));
    assert_eq!(
        got[1],
        Step::FromBookmark {
            mark: "0".into(),
            to: SYNC.into(),
            rollback: Rollback::default()
        }
    );
    assert_eq!(got.len(), 2);
}

#[test]
fn no_common_snapshot_is_a_conflict_showing_both_sides() {
    let i = input(vec![s("a", 1, 5)], Some(vec![s("z", 9, 3)]));
    let err = plan(&i, &opts()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("source snapshots: a") && msg.contains("target snapshots: z"),
        "{msg}"
    );
}

#[test]
fn force_delete_destroys_then_sends_full() {
    let o = Options {
        force_delete: true,
        ..opts()
    };
    let i = input(vec![s("a", 1, 5)], Some(vec![s("z", 9, 3)]));
    let got = steps(plan(&i, &o));
    assert_eq!(
        got[1..],
        [
            Step::DestroyTarget,
            Step::Full { snap: "a".into() },
            incr("a", SYNC)
        ]
    );
}

#[test]
fn force_delete_never_destroys_a_pool_root() {
    let o = Options {
        force_delete: true,
        ..opts()
    };
    let mut i = input(vec![s("a", 1, 5)], Some(vec![s("z", 9, 3)]));
    i.target.as_mut().unwrap().is_pool_root = true;
    assert!(matches!(
        plan(&i, &o),
        Err(Conflict::NoCommonSnapshot { .. })
    ));
}

#[test]
fn resume_token_comes_first_and_alone() {
    let mut i = input(vec![s("a", 1, 5)], Some(vec![s("a", 1, 3)]));
    i.target.as_mut().unwrap().resume_token = Some("1-x".into());
    assert_eq!(
        steps(plan(&i, &opts())),
        vec![Step::Resume {
            token: "1-x".into()
        }]
    );
    let o = Options {
        resume: false,
        ..opts()
    };
    assert_eq!(steps(plan(&i, &o))[0], Step::AbortPartialReceive);
}

#[test]
fn no_resume_after_a_cut_first_full_receive_starts_over() {
    // The partial dataset has no snapshot yet; `zfs receive -A` removes it.
    let mut i = input(vec![s("a", 1, 5)], Some(vec![]));
    i.target.as_mut().unwrap().resume_token = Some("1-x".into());
    let o = Options {
        resume: false,
        ..opts()
    };
    let got = steps(plan(&i, &o));
    assert_eq!(got[0], Step::AbortPartialReceive);
    assert!(
        got.iter()
            .any(|st| matches!(st, Step::Full { snap } if snap == "a")),
        "{got:?}"
    );
}

#[test]
fn only_own_older_sync_snaps_are_pruned() {
    let i = input(
        vec![
            s(OLD_SYNC, 1, 5),
            s("syncoid_h2_2026-11-26_12:00:00-GMT00:00", 3, 6),
            s("manual", 4, 7),
        ],
        Some(vec![s(OLD_SYNC, 1, 3)]),
    );
    let got = steps(plan(&i, &opts()));
    assert!(got.contains(&Step::Prune {
        side: Side::Source,
        snaps: vec![OLD_SYNC.into()]
    }));
    assert!(got.contains(&Step::Prune {
        side: Side::Target,
        snaps: vec![OLD_SYNC.into()]
    }));
    let o = Options {
        keep_sync_snap: true,
        ..opts()
    };
    assert!(!steps(plan(&i, &o))
        .iter()
        .any(|s| matches!(s, Step::Prune { .. })));
}

#[test]
fn clones_start_from_their_origin() {
    let mut i = input(vec![s("c1", 5, 9)], None);
    i.origin = Some("pool/fs@base".into());
    let got = steps(plan(&i, &opts()));
    assert_eq!(
        got[1],
        Step::Clone {
            origin: "pool/fs@base".into(),
            snap: "c1".into()
        }
    );
}

#[test]
fn no_sync_snap_with_create_bookmark() {
    let o = Options {
        create_bookmark: true,
        ..opts()
    };
    let mut i = input(vec![s("a", 1, 5), s("b", 2, 6)], Some(vec![s("a", 1, 3)]));
    i.new_sync_snap = None;
    let got = steps(plan(&i, &o));
    assert_eq!(got.last(), Some(&Step::Bookmark { snap: "b".into() }));
}

#[test]
fn holds_move_from_base_to_newest() {
    let o = Options {
        use_hold: true,
        ..opts()
    };
    let i = input(vec![s("a", 1, 5)], Some(vec![s("a", 1, 3)]));
    let got = steps(plan(&i, &o));
    assert!(got.contains(&Step::Hold {
        side: Side::Target,
        snap: SYNC.into()
    }));
    assert!(got.contains(&Step::Release {
        side: Side::Source,
        snap: "a".into()
    }));
}

#[test]
fn filtered_snapshots_are_sent_as_a_chain_of_single_incrementals() {
    let o = Options {
        snaps_filtered: true,
        ..opts()
    };
    // "b" was filtered out of the list by the caller; the chain skips it.
    let i = input(vec![s("a", 1, 5), s("c", 3, 7)], Some(vec![s("a", 1, 3)]));
    let got = steps(plan(&i, &o));
    let single = |f: &str, t: &str| Step::Incremental {
        from: f.into(),
        to: t.into(),
        intermediates: false,
        rollback: Rollback::default(),
    };
    assert_eq!(got[1..3], [single("a", "c"), single("c", SYNC)]);
}

#[test]
fn recreated_snapshot_names_clash_unless_force_delete() {
    // syncoid test 008: "dup" was destroyed and re-created on the source.
    let i = input(
        vec![s(OLD_SYNC, 1, 5), s("dup", 9, 6)],
        Some(vec![s("dup", 2, 2), s(OLD_SYNC, 1, 3)]),
    );
    assert_eq!(
        plan(&i, &opts()),
        Err(Conflict::NameClash {
            names: vec!["dup".into()]
        })
    );
    let o = Options {
        force_delete: true,
        ..opts()
    };
    let got = steps(plan(&i, &o));
    assert_eq!(
        got[1],
        Step::DestroyClashing {
            snaps: vec!["dup".into()]
        }
    );
    assert!(matches!(got[2], Step::Incremental { .. }));
}

#[test]
fn target_only_snapshots_for_delete_target_snapshots() {
    let src = vec![s("a", 1, 1), s("c", 3, 3)];
    let dst = vec![s("a", 1, 1), s("b", 2, 2), s("c", 3, 3), s("d", 4, 4)];
    assert_eq!(target_only(&src, &dst), ["b", "d"]);
}

#[test]
fn sync_snap_recognition() {
    assert!(is_own_sync_snap(OLD_SYNC, "syncoid_h"));
    // syncoid 2.1-2.3 write a colon between date and time.
    assert!(is_own_sync_snap(
        "syncoid_h_2026-11-26:12:00:00-GMT00:00",
        "syncoid_h"
    ));
    assert!(!is_own_sync_snap(
        "syncoid_h2_2026-11-26_12:00:00-GMT00:00",
        "syncoid_h"
    ));
    assert!(!is_own_sync_snap("syncoid_h_manual", "syncoid_h"));
}

fn arb_side() -> impl Strategy<Value = Vec<Snap>> {
    proptest::collection::btree_set(1u64..40, 0..12).prop_map(|guids| {
        guids
            .into_iter()
            .enumerate()
            .map(|(i, g)| s(&format!("s{g}"), g, i as u64 + 1))
            .collect()
    })
}

proptest! {
    #[test]
    fn plans_never_destroy_without_force_delete_nor_resend_target_snapshots(
        source in arb_side(),
        target in proptest::option::of(arb_side()),
        marks in arb_side(),
        force_delete: bool,
        no_rollback: bool,
        no_stream: bool,
        sync: bool,
    ) {
        let o = Options { force_delete, no_rollback, no_stream, ..opts() };
        let mut i = input(source.clone(), target.clone());
        i.source_marks = marks;
        if !sync { i.new_sync_snap = None; }
        let Ok(Plan::Steps(steps)) = plan(&i, &o) else { return Ok(()) };
        for st in &steps {
            if !force_delete {
                let destroys = matches!(st, Step::DestroyTarget | Step::DestroyClashing { .. });
                prop_assert!(!destroys, "destroying step without --force-delete");
            }
            match st {
                Step::Incremental { rollback, .. } | Step::FromBookmark { rollback, .. } if no_rollback => {
                    prop_assert!(rollback.is_empty());
                }
                _ => {}
            }
            // Every snapshot a step sends is newer than anything the target
            // already has in common with the source: nothing is sent twice.
            let destroyed = steps.contains(&Step::DestroyTarget);
            if let (Some(t), false) = (&target, destroyed) {
                let sent: Vec<&str> = match st {
                    Step::Full { snap } => vec![snap],
                    Step::Incremental { to, .. } | Step::FromBookmark { to, .. } => vec![to],
                    _ => vec![],
                };
                for name in sent {
                    if let Some(src) = source.iter().find(|x| x.name == name) {
                        prop_assert!(!t.iter().any(|x| x.guid == src.guid), "{} resent", name);
                    }
                }
                let full = steps.iter().any(|s| matches!(s, Step::Full { .. } | Step::Clone { .. }));
                prop_assert!(!full, "full send into an existing target");
            }
        }
    }
}

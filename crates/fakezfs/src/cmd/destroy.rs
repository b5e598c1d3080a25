//! `zfs destroy`: filesystems (-r, -R), snapshots (lists, `%` ranges, -r),
//! bookmarks; `-n`/`-v`/`-p` dry runs, with 2.1's refusals.

use std::fs;

use crate::fail::{fail, Fail, Res};
use crate::opts;
use crate::state::{State, Store};
use syncoid_rsync_core::units::nicenum;

fn usage(e: String) -> Fail {
    Fail::new(2, e)
}

pub fn destroy(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "fnpRrvd").map_err(usage)?;
    let [target] = &o.operands[..] else {
        return Err(usage("missing dataset argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        if let Some((fs, spec)) = target.split_once('@') {
            return destroy_snapshots(st, &o, fs, spec);
        }
        if let Some((fs, mark)) = target.split_once('#') {
            let d = st.datasets.get_mut(fs).ok_or_else(|| {
                Fail::new(
                    1,
                    format!("cannot destroy '{target}': dataset does not exist"),
                )
            })?;
            let before = d.bookmarks.len();
            d.bookmarks.retain(|b| b.name != mark);
            if d.bookmarks.len() == before {
                return fail(format!(
                    "cannot destroy '{target}': bookmark does not exist"
                ));
            }
            return Ok(());
        }
        destroy_fs(&store, st, &o, target)
    })
}

fn verb(o: &opts::Opts) -> &'static str {
    if o.has('n') {
        "would"
    } else {
        "will"
    }
}

fn destroy_fs(store: &Store, st: &mut State, o: &opts::Opts, target: &str) -> Res<()> {
    let Some(d) = st.datasets.get(target) else {
        return fail(format!("cannot open '{target}': dataset does not exist"));
    };
    if !target.contains('/') {
        return fail(format!("cannot destroy '{target}': operation does not apply to pools\nuse 'zfs destroy -r {target}' to destroy all datasets in the pool\nuse 'zpool destroy {target}' to destroy the pool itself"));
    }
    let mut doomed: Vec<String> = Vec::new();
    for child in st.descendants(target).iter().rev() {
        let cd = &st.datasets[child];
        doomed.extend(cd.snapshots.iter().map(|s| format!("{child}@{}", s.name)));
        doomed.push(child.clone());
    }
    doomed.extend(d.snapshots.iter().map(|s| format!("{target}@{}", s.name)));
    if !doomed.is_empty() && !o.has('r') && !o.has('R') {
        return fail(format!(
            "cannot destroy '{target}': filesystem has children\nuse '-r' to destroy the following datasets:\n{}",
            doomed.join("\n")
        ));
    }
    let clones: Vec<String> = doomed
        .iter()
        .chain(std::iter::once(&target.to_string()))
        .filter(|n| n.contains('@'))
        .flat_map(|s| st.clones_of(s))
        .filter(|c| !c.starts_with(&format!("{target}/")) && c != target)
        .collect();
    if !clones.is_empty() && !o.has('R') {
        return fail(format!(
            "cannot destroy '{target}': filesystem has dependent clones\nuse '-R' to destroy the following datasets:\n{}",
            clones.join("\n")
        ));
    }
    for n in doomed.iter().filter(|n| n.contains('@')) {
        if let Some((_, s)) = st.snap(n) {
            if !s.holds.is_empty() {
                return fail(format!("cannot destroy snapshot {n}: dataset is busy"));
            }
        }
    }
    doomed.push(target.to_string());
    if o.has('v') || o.has('n') {
        for n in &doomed {
            if o.has('p') {
                println!("destroy\t{n}");
            } else if o.has('v') {
                println!("{} destroy {n}", verb(o));
            }
        }
    }
    if o.has('n') {
        return Ok(());
    }
    let mounts: Vec<_> = doomed
        .iter()
        .filter(|n| !n.contains('@'))
        .map(|n| store.mountpoint(st, n))
        .collect();
    for n in &doomed {
        if !n.contains('@') {
            st.datasets.remove(n);
        }
    }
    for m in clones {
        st.datasets.remove(&m);
    }
    for m in mounts {
        let _ = fs::remove_dir_all(m);
    }
    Ok(())
}

/// Expands `a,b%c,%d` into snapshot names of `d`, in createtxg order.
fn expand(st: &State, fs: &str, spec: &str) -> Vec<String> {
    let Some(d) = st.ds(fs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        if let Some((a, b)) = part.split_once('%') {
            let start = if a.is_empty() {
                Some(0)
            } else {
                d.snapshot(a).map(|s| s.createtxg)
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                d.snapshot(b).map(|s| s.createtxg)
            };
            if let (Some(s), Some(e)) = (start, end) {
                out.extend(
                    d.snapshots
                        .iter()
                        .filter(|x| x.createtxg >= s && x.createtxg <= e)
                        .map(|x| x.name.clone()),
                );
            }
        } else if d.snapshot(part).is_some() {
            out.push(part.to_string());
        }
    }
    out.dedup();
    out
}

fn destroy_snapshots(st: &mut State, o: &opts::Opts, fs: &str, spec: &str) -> Res<()> {
    if st.ds(fs).is_none() {
        return fail(format!("cannot open '{fs}': dataset does not exist"));
    }
    let mut fss = vec![fs.to_string()];
    if o.has('r') {
        fss.extend(st.descendants(fs));
    }
    let mut doomed = Vec::new();
    for f in &fss {
        doomed.extend(expand(st, f, spec).into_iter().map(|s| format!("{f}@{s}")));
    }
    if doomed.is_empty() {
        return fail("could not find any snapshots to destroy; check snapshot names.");
    }
    let mut reclaim = 0;
    for n in &doomed {
        let (_, s) = st.snap(n).expect("expanded");
        reclaim += s.written;
        if o.has('p') {
            println!("destroy\t{n}");
        } else if o.has('v') {
            println!("{} destroy {n}", verb(o));
        }
    }
    for n in &doomed {
        let clones = st.clones_of(n);
        if !clones.is_empty() && !o.has('R') {
            let mut deps = Vec::new();
            for c in &clones {
                let cd = &st.datasets[c];
                deps.extend(cd.snapshots.iter().map(|s| format!("{c}@{}", s.name)));
                deps.push(c.clone());
            }
            return fail(format!(
                "cannot destroy '{n}': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\n{}",
                deps.join("\n")
            ));
        }
        let (_, s) = st.snap(n).expect("expanded");
        if !s.holds.is_empty() && !o.has('d') {
            return fail(format!("cannot destroy snapshot {n}: dataset is busy"));
        }
    }
    if o.has('v') || o.has('p') {
        if o.has('p') {
            println!("reclaim\t{reclaim}");
        } else {
            println!("{} reclaim {}", verb(o), nicenum(reclaim));
        }
    }
    if o.has('n') {
        return Ok(());
    }
    for n in doomed {
        let (f, s) = n.split_once('@').expect("snapshot");
        if let Some(d) = st.datasets.get_mut(f) {
            d.snapshots.retain(|x| x.name != s);
        }
    }
    Ok(())
}

//! The zfs subcommands that change metadata: create, clone, snapshot,
//! rename, rollback, bookmark, hold/release/holds, set/inherit.

use std::fs;

use crate::cmd::list::report;
use crate::fail::{fail, Fail, Res};
use crate::opts;
use crate::props;
use crate::state::{
    new_guid, now, Bookmark, Dataset, Encryption, PropVal, Snapshot, Source, State, Store,
    Synthetic,
};
use crate::tree;
use syncoid_rsync_core::names::{DatasetName, SnapshotName};
use syncoid_rsync_core::units::parse_size;

fn usage(e: String) -> Fail {
    Fail::new(2, e)
}

pub fn new_dataset(st: &mut State, origin: Option<String>) -> Dataset {
    Dataset {
        guid: new_guid(),
        createtxg: st.next_txg(),
        creation: now(),
        volume: false,
        origin,
        props: Default::default(),
        snapshots: Vec::new(),
        bookmarks: Vec::new(),
        synthetic: None,
        partial: None,
        inconsistent: false,
        mounted: true,
        encryption: None,
    }
}

/// Applies `-o prop=value` settings to a dataset being created.
fn apply_create_props(
    name: &str,
    d: &mut Dataset,
    settings: &[&str],
    parent_enc: Option<&Encryption>,
) -> Res<()> {
    let mut keyformat = None;
    for s in settings {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| usage(format!("missing '=' for property argument '{s}'")))?;
        match k {
            "encryption" if v != "off" => {
                d.encryption = Some(Encryption {
                    root: name.into(),
                    keyformat: String::new(),
                    key_loaded: true,
                })
            }
            "encryption" => {}
            "keyformat" => keyformat = Some(v.to_string()),
            "fakezfs:synthetic" => set_synthetic(d, v)?,
            _ => check_settable(name, k, v).map(|_| {
                d.props.insert(k.into(), local(v));
            })?,
        }
    }
    match (&mut d.encryption, keyformat) {
        (Some(e), Some(f)) => e.keyformat = f,
        (Some(_), None) => {
            return fail(format!(
                "cannot create '{name}': Keyformat required for new encryption root"
            ))
        }
        (None, _) => d.encryption = parent_enc.cloned(),
    }
    if matches!(&d.encryption, Some(e) if e.root == name && e.keyformat == "passphrase") {
        // The passphrase is read from stdin (keylocation=prompt); its value
        // does not matter to the emulator.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    Ok(())
}

fn local(v: &str) -> PropVal {
    PropVal {
        value: v.into(),
        source: Source::Local,
    }
}

fn set_synthetic(d: &mut Dataset, v: &str) -> Res<()> {
    let size = parse_size(v).ok_or_else(|| usage(format!("bad synthetic size '{v}'")))?;
    d.synthetic = (size > 0).then(|| Synthetic {
        size,
        seed: new_guid(),
    });
    d.props.insert("fakezfs:synthetic".into(), local(v));
    Ok(())
}

fn check_settable(name: &str, k: &str, v: &str) -> Res<()> {
    if !props::is_known(k) {
        return fail(format!(
            "cannot set property for '{name}': invalid property '{k}'"
        ));
    }
    if props::is_readonly(k) {
        return fail(format!(
            "cannot set property for '{name}': '{k}' is readonly"
        ));
    }
    if k == "recordsize" && parse_size(v).is_none() {
        return fail(format!(
            "cannot set property for '{name}': 'recordsize' must be power of 2 from 512B to 1M"
        ));
    }
    Ok(())
}

/// Stores a numeric value for size-like properties, as zfs does.
fn normalize(k: &str, v: &str) -> String {
    if matches!(
        k,
        "recordsize" | "special_small_blocks" | "quota" | "refquota"
    ) {
        if let Some(n) = parse_size(v) {
            return n.to_string();
        }
    }
    v.to_string()
}

pub fn create(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "psuo:V:b:").map_err(usage)?;
    let [name] = &o.operands[..] else {
        return Err(usage("missing filesystem argument".into()));
    };
    let dn = DatasetName::parse(name)
        .map_err(|e| Fail::new(1, format!("cannot create '{name}': {e}")))?;
    let store = Store::from_env()?;
    store.transact(|st| {
        if st.datasets.contains_key(name) {
            return fail(format!("cannot create '{name}': dataset already exists"));
        }
        let parent = dn
            .parent()
            .ok_or_else(|| Fail::new(1, format!("cannot create '{name}': missing dataset name")))?;
        if st.ds(parent.as_str()).is_none() {
            if !o.has('p') {
                return fail(format!("cannot create '{name}': parent does not exist"));
            }
            create_parents(st, &parent)?;
        }
        let parent_enc = st.datasets[parent.as_str()].encryption.clone();
        let mut d = new_dataset(st, None);
        d.volume = o.has('V');
        let settings: Vec<String> = o.values('o').iter().map(|s| s.to_string()).collect();
        let settings: Vec<&str> = settings.iter().map(|s| s.as_str()).collect();
        apply_create_props(name, &mut d, &settings, parent_enc.as_ref())?;
        st.datasets.insert(name.clone(), d);
        fs::create_dir_all(store.mountpoint(st, name))
            .map_err(|e| Fail::new(1, format!("cannot mount '{name}': {e}")))?;
        Ok(())
    })
}

pub fn create_parents(st: &mut State, dn: &DatasetName) -> Res<()> {
    if st.datasets.contains_key(dn.as_str()) {
        return Ok(());
    }
    match dn.parent() {
        Some(p) => create_parents(st, &p)?,
        None => {
            return fail(format!(
                "cannot create '{dn}': no such pool '{}'",
                dn.pool()
            ))
        }
    }
    let d = new_dataset(st, None);
    st.datasets.insert(dn.to_string(), d);
    Ok(())
}

pub fn clone(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "po:").map_err(usage)?;
    let [snap, target] = &o.operands[..] else {
        return Err(usage("missing source or target argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        let (_, s) = st
            .snap(snap)
            .ok_or_else(|| Fail::new(1, format!("cannot open '{snap}': dataset does not exist")))?;
        let (manifest, synth) = (s.manifest.clone(), s.synthetic);
        if st.datasets.contains_key(target) {
            return fail(format!("cannot create '{target}': dataset already exists"));
        }
        let dn = DatasetName::parse(target)
            .map_err(|e| Fail::new(1, format!("cannot create '{target}': {e}")))?;
        if let Some(p) = dn.parent() {
            if st.ds(p.as_str()).is_none() {
                if !o.has('p') {
                    return fail(format!("cannot create '{target}': parent does not exist"));
                }
                create_parents(st, &p)?;
            }
        }
        let mut d = new_dataset(st, Some(snap.clone()));
        d.synthetic = synth;
        st.datasets.insert(target.clone(), d);
        let m = tree::get_manifest(&store, &manifest)?;
        tree::materialize(&store, &store.mountpoint(st, target), &m)
    })
}

/// Takes a snapshot of `fs` named `snap` at `txg`: captures its files.
pub fn take_snapshot(store: &Store, st: &mut State, fs: &str, snap: &str, txg: u64) -> Res<()> {
    let dir = store.mountpoint(st, fs);
    let m = tree::capture(store, &dir, true)?;
    let referenced = tree::total_size(&m);
    let d = st.datasets.get(fs).expect("caller checked");
    let prev = match d.latest() {
        Some(p) => tree::get_manifest(store, &p.manifest)?,
        None => Default::default(),
    };
    let synth = d.synthetic;
    let prev_synth = d.latest().and_then(|s| s.synthetic);
    let synth_written = if synth != prev_synth {
        synth.map(|s| s.size).unwrap_or(0)
    } else {
        0
    };
    let written = tree::changed_size(&prev, &m) + synth_written;
    let manifest = tree::put_manifest(store, &m)?;
    let snapshot = Snapshot {
        name: snap.into(),
        guid: new_guid(),
        createtxg: txg,
        creation: now(),
        manifest,
        synthetic: synth,
        holds: Default::default(),
        props: Default::default(),
        written,
        referenced: referenced + synth.map(|s| s.size).unwrap_or(0),
    };
    st.datasets
        .get_mut(fs)
        .expect("caller checked")
        .snapshots
        .push(snapshot);
    Ok(())
}

pub fn snapshot(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "ro:").map_err(usage)?;
    if o.operands.is_empty() {
        return Err(usage("missing snapshot argument".into()));
    }
    let store = Store::from_env()?;
    store.transact(|st| {
        let mut targets: Vec<(String, String)> = Vec::new();
        for op in &o.operands {
            let sn = SnapshotName::parse(op)
                .map_err(|e| Fail::new(1, format!("cannot create snapshot '{op}': {e}")))?;
            let fs = sn.dataset().to_string();
            if st.ds(&fs).is_none() {
                return fail(format!("cannot open '{fs}': dataset does not exist\nusage:\n\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ..."));
            }
            let mut all = vec![fs.clone()];
            if o.has('r') {
                all.extend(st.descendants(&fs));
            }
            for f in all {
                if targets.iter().any(|(t, _)| *t == f) {
                    return fail("cannot create snapshots : multiple snapshots of same fs not allowed\nno snapshots were created");
                }
                targets.push((f, sn.short().to_string()));
            }
        }
        for (fs, s) in &targets {
            if st.datasets[fs].snapshot(s).is_some() {
                let what = if targets.len() > 1 { "snapshots" } else { "snapshot" };
                let name = if targets.len() > 1 { String::new() } else { format!("'{fs}@{s}'") };
                if targets.len() > 1 {
                    return fail(format!("cannot create {what} : dataset already exists\nno snapshots were created"));
                }
                return fail(format!("cannot create snapshot {name}: dataset already exists"));
            }
        }
        let txg = st.next_txg();
        for (fs, s) in &targets {
            take_snapshot(&store, st, fs, s, txg)?;
            let props: Vec<&str> = o.values('o');
            for p in props {
                if let Some((k, v)) = p.split_once('=') {
                    let d = st.datasets.get_mut(fs).expect("exists");
                    d.snapshot_mut(s).expect("just taken").props.insert(k.into(), local(v));
                }
            }
        }
        Ok(())
    })
}

pub fn rename(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "fpru").map_err(usage)?;
    let [from, to] = &o.operands[..] else {
        return Err(usage("missing source or target dataset name".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        if let Some((fs, s)) = from.split_once('@') {
            let to_short = to.split_once('@').map(|(_, t)| t).unwrap_or(to);
            let d = st
                .datasets
                .get_mut(fs)
                .filter(|d| d.snapshot(s).is_some())
                .ok_or_else(|| {
                    Fail::new(1, format!("cannot open '{from}': dataset does not exist"))
                })?;
            if d.snapshot(to_short).is_some() {
                return fail(format!(
                    "cannot rename to '{fs}@{to_short}': dataset already exists"
                ));
            }
            d.snapshot_mut(s).expect("checked").name = to_short.into();
            let (old, new) = (from.clone(), format!("{fs}@{to_short}"));
            for d in st.datasets.values_mut() {
                if d.origin.as_deref() == Some(&old) {
                    d.origin = Some(new.clone());
                }
            }
            return Ok(());
        }
        if st.ds(from).is_none() {
            return fail(format!("cannot open '{from}': dataset does not exist"));
        }
        if st.datasets.contains_key(to) {
            return fail(format!("cannot rename to '{to}': dataset already exists"));
        }
        let old_mp = store.mountpoint(st, from);
        let mut names = vec![from.clone()];
        names.extend(st.descendants(from));
        for n in names {
            let d = st.datasets.remove(&n).expect("listed");
            st.datasets.insert(format!("{to}{}", &n[from.len()..]), d);
        }
        let new_mp = store.mountpoint(st, to);
        if let Some(p) = new_mp.parent() {
            let _ = fs::create_dir_all(p);
        }
        fs::rename(&old_mp, &new_mp).map_err(|e| Fail::new(1, format!("cannot mount '{to}': {e}")))
    })
}

pub fn rollback(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "rRf").map_err(usage)?;
    let [target] = &o.operands[..] else {
        return Err(usage("missing dataset argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        let (fs, s) = target
            .split_once('@')
            .ok_or_else(|| Fail::new(1, format!("cannot rollback '{target}': not a snapshot")))?;
        let (d, snap) = st
            .snap(target)
            .ok_or_else(|| Fail::new(1, format!("cannot open '{target}': dataset does not exist")))?;
        let later: Vec<String> = d
            .snapshots
            .iter()
            .filter(|x| x.createtxg > snap.createtxg)
            .map(|x| format!("{fs}@{}", x.name))
            .chain(
                d.bookmarks
                    .iter()
                    .filter(|b| b.createtxg > snap.createtxg)
                    .map(|b| format!("{fs}#{}", b.name)),
            )
            .collect();
        if !later.is_empty() && !o.has('r') && !o.has('R') {
            return fail(format!(
                "cannot rollback to '{target}': more recent snapshots or bookmarks exist\nuse '-r' to force deletion of the following snapshots and bookmarks:\n{}",
                later.join("\n")
            ));
        }
        let (txg, manifest, synth) = (snap.createtxg, snap.manifest.clone(), snap.synthetic);
        for l in &later {
            if let Some((lfs, ls)) = l.split_once('@') {
                if !st.clones_of(l).is_empty() {
                    return fail(format!("cannot destroy '{l}': snapshot has dependent clones"));
                }
                let _ = (lfs, ls);
            }
        }
        let d = st.datasets.get_mut(fs).expect("exists");
        d.snapshots.retain(|x| x.createtxg <= txg);
        d.bookmarks.retain(|b| b.createtxg <= txg);
        d.synthetic = synth;
        let _ = s;
        let m = tree::get_manifest(&store, &manifest)?;
        tree::materialize(&store, &store.mountpoint(st, fs), &m)
    })
}

pub fn bookmark(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "").map_err(usage)?;
    let [src, mark] = &o.operands[..] else {
        return Err(usage("missing source or bookmark argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        let (fs, m) = match mark.split_once('#') {
            Some(("", m)) => (
                src.split(['@', '#']).next().unwrap_or("").to_string(),
                m.to_string(),
            ),
            Some((f, m)) => (f.to_string(), m.to_string()),
            None => {
                return fail(format!(
                    "cannot create bookmark '{mark}': invalid bookmark name"
                ))
            }
        };
        let full = format!("{fs}#{m}");
        let d = st.ds(&fs).ok_or_else(|| {
            Fail::new(
                1,
                format!("cannot create bookmark '{full}': dataset does not exist"),
            )
        })?;
        let (guid, createtxg, creation, manifest, synthetic) =
            if let Some((_, s)) = src.split_once('@') {
                let s = d.snapshot(s).ok_or_else(|| {
                    Fail::new(
                        1,
                        format!("cannot create bookmark '{full}': snapshot does not exist"),
                    )
                })?;
                (
                    s.guid,
                    s.createtxg,
                    s.creation,
                    s.manifest.clone(),
                    s.synthetic,
                )
            } else if let Some((_, b)) = src.split_once('#') {
                let b = d.bookmark(b).ok_or_else(|| {
                    Fail::new(
                        1,
                        format!("cannot create bookmark '{full}': bookmark does not exist"),
                    )
                })?;
                (
                    b.guid,
                    b.createtxg,
                    b.creation,
                    b.manifest.clone(),
                    b.synthetic,
                )
            } else {
                return fail(format!(
                    "cannot create bookmark '{full}': invalid source name"
                ));
            };
        if d.bookmark(&m).is_some() {
            return fail(format!("cannot create bookmark '{full}': bookmark exists"));
        }
        let d = st.datasets.get_mut(&fs).expect("exists");
        d.bookmarks.push(Bookmark {
            name: m,
            guid,
            createtxg,
            creation,
            manifest,
            synthetic,
        });
        d.bookmarks.sort_by_key(|b| b.createtxg);
        Ok(())
    })
}

pub fn hold(args: &[String], release: bool) -> Res<()> {
    let o = opts::parse(args, "r").map_err(usage)?;
    let Some((tag, snaps)) = o.operands.split_first() else {
        return Err(usage("missing tag argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        let mut errs = Vec::new();
        for snap in snaps {
            let (fs, s) = snap.split_once('@').unwrap_or((snap, ""));
            let mut targets = vec![fs.to_string()];
            if o.has('r') {
                targets.extend(st.descendants(fs));
            }
            for f in targets {
                let full = format!("{f}@{s}");
                let Some(sn) = st.datasets.get_mut(&f).and_then(|d| d.snapshot_mut(s)) else {
                    if f == fs {
                        errs.push(Fail::new(1, format!("cannot open '{full}': dataset does not exist")));
                    }
                    continue;
                };
                if release {
                    if sn.holds.remove(tag).is_none() {
                        errs.push(Fail::new(1, format!("cannot release hold from snapshot '{full}': no such tag on this dataset")));
                    }
                } else if sn.holds.contains_key(tag) {
                    errs.push(Fail::new(1, format!("cannot hold snapshot '{full}': tag already exists on this dataset")));
                } else {
                    sn.holds.insert(tag.clone(), now());
                }
            }
        }
        report(errs)
    })
}

pub fn holds(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "rHp").map_err(usage)?;
    let store = Store::from_env()?;
    let st = store.read()?;
    let mut rows = Vec::new();
    let mut errs = Vec::new();
    for snap in &o.operands {
        let Some((_, s)) = st.snap(snap) else {
            errs.push(Fail::new(
                1,
                format!("cannot open '{snap}': dataset does not exist"),
            ));
            continue;
        };
        for (tag, t) in &s.holds {
            let when = if o.has('p') {
                t.to_string()
            } else {
                props::human_date(*t)
            };
            rows.push([snap.clone(), tag.clone(), when]);
        }
    }
    if o.has('H') {
        for r in &rows {
            println!("{}", r.join("\t"));
        }
    } else if !rows.is_empty() {
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(4);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(3);
        println!("{:<w0$}  {:<w1$}  TIMESTAMP", "NAME", "TAG");
        for r in &rows {
            println!("{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
        }
    }
    report(errs)
}

pub fn set(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "").map_err(usage)?;
    let Some((assign, targets)) = o.operands.split_first() else {
        return Err(usage("missing property=value argument".into()));
    };
    let (k, v) = assign
        .split_once('=')
        .ok_or_else(|| usage(format!("missing '=' for property argument '{assign}'")))?;
    let store = Store::from_env()?;
    store.transact(|st| {
        for t in targets {
            check_settable(t, k, v)?;
            if let Some((fs, s)) = t.split_once('@') {
                let sn = st
                    .datasets
                    .get_mut(fs)
                    .and_then(|d| d.snapshot_mut(s))
                    .ok_or_else(|| Fail::new(1, format!("cannot open '{t}': dataset does not exist")))?;
                if !k.contains(':') {
                    return fail(format!("cannot set property for '{t}': this property can not be modified for snapshots"));
                }
                sn.props.insert(k.into(), local(v));
                continue;
            }
            let old_mp = store.mountpoint(st, t);
            let d = st
                .datasets
                .get_mut(t.as_str())
                .filter(|d| !d.inconsistent)
                .ok_or_else(|| Fail::new(1, format!("cannot open '{t}': dataset does not exist")))?;
            if k == "fakezfs:synthetic" {
                set_synthetic(d, v)?;
                continue;
            }
            d.props.insert(k.into(), local(&normalize(k, v)));
            if k == "mountpoint" {
                move_mount(&old_mp, &store.mountpoint(st, t))?;
            }
        }
        Ok(())
    })
}

fn move_mount(old: &std::path::Path, new: &std::path::Path) -> Res<()> {
    if old == new {
        return Ok(());
    }
    if let Some(p) = new.parent() {
        let _ = fs::create_dir_all(p);
    }
    if old.exists() && !new.exists() {
        fs::rename(old, new)
            .map_err(|e| Fail::new(1, format!("cannot mount '{}': {e}", new.display())))
    } else {
        fs::create_dir_all(new)
            .map_err(|e| Fail::new(1, format!("cannot mount '{}': {e}", new.display())))
    }
}

pub fn inherit(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "rS").map_err(usage)?;
    let Some((prop, targets)) = o.operands.split_first() else {
        return Err(usage("missing property argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        for t in targets {
            let mut names = vec![t.clone()];
            if o.has('r') {
                names.extend(st.descendants(t));
            }
            if st.ds(t).is_none() {
                return fail(format!("cannot open '{t}': dataset does not exist"));
            }
            let old_mp = store.mountpoint(st, t);
            for n in names {
                if let Some(d) = st.datasets.get_mut(&n) {
                    d.props.remove(prop.as_str());
                    if prop == "fakezfs:synthetic" {
                        d.synthetic = None;
                    }
                }
            }
            if prop == "mountpoint" {
                move_mount(&old_mp, &store.mountpoint(st, t))?;
            }
        }
        Ok(())
    })
}

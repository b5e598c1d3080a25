//! `zfs receive`: full, incremental, resumable (-s, token streams), abort
//! (-A), with the checks and messages of OpenZFS 2.1.

use std::io::{BufReader, Read};
use std::time::Instant;
use xxhash_rust::xxh3::Xxh3;

use crate::cmd::manage::{create_parents, new_dataset};
use crate::fail::{fail, Fail, Res};
use crate::faults::FaultyIn;
use crate::opts;
use crate::state::{Dataset, Partial, PropVal, Snapshot, Source, State, Store};
use crate::stream::{self, Header, Next, Record, StreamError};
use crate::synth;
use crate::token;
use crate::tree::{self, Manifest};
use syncoid_rsync_core::names::DatasetName;
use syncoid_rsync_core::units::nicenum;

fn usage(e: String) -> Fail {
    Fail::new(2, e)
}

/// What one receive did, for the invocation log.
#[derive(Default)]
pub struct Report {
    pub stdin_bytes: u64,
    /// (snapshot, payload offset received from, payload offset received to)
    pub fed: Vec<(String, u64, u64)>,
}

struct Target {
    fs: String,
    snap: String,
    /// Receiving a new filesystem (full stream or clone).
    new_fs: bool,
    origin: Option<String>,
    /// Resuming: bytes of ops already received.
    prefix: Vec<u8>,
    skip: bool,
}

pub fn receive(args: &[String], report: &mut Report) -> Res<()> {
    let o = opts::parse(args, "vnsFuhMdeAo:x:").map_err(usage)?;
    let [target] = &o.operands[..] else {
        return Err(usage("missing snapshot argument".into()));
    };
    let store = Store::from_env()?;
    if o.has('A') {
        return abort(&store, target);
    }
    let mut input = FaultyIn::stdin();
    let r = receive_all(&store, &o, target, &mut input, report);
    report.stdin_bytes = input.read;
    r
}

fn abort(store: &Store, target: &str) -> Res<()> {
    store.transact(|st| {
        let Some(d) = st.datasets.get_mut(target).filter(|d| d.partial.is_some()) else {
            return fail(format!(
                "'{target}' does not have any resumable receive state to abort"
            ));
        };
        let p = d.partial.take().expect("checked");
        let _ = std::fs::remove_file(store.partial_path(&p.ops_file));
        if d.inconsistent {
            st.datasets.remove(target);
        }
        Ok(())
    })
}

fn receive_all(
    store: &Store,
    o: &opts::Opts,
    target: &str,
    input: &mut FaultyIn,
    report: &mut Report,
) -> Res<()> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let mut count = 0;
    loop {
        let header = match stream::read_next(&mut r) {
            Ok(Next::End) => return Ok(()),
            Ok(Next::Substream(h)) => h,
            Err(StreamError::Incomplete) if count == 0 => {
                return fail("cannot receive: failed to read from stream");
            }
            Err(e) => return fail(format!("cannot receive: {}", describe(&e))),
        };
        count += 1;
        receive_one(store, o, target, &header, &mut r, report)?;
    }
}

fn describe(e: &StreamError) -> String {
    match e {
        StreamError::Incomplete => "incomplete stream".into(),
        StreamError::Corrupt(m) => m.clone(),
    }
}

fn kind(h: &Header) -> &'static str {
    if h.is_full() {
        "new filesystem"
    } else {
        "incremental"
    }
}

fn target_names(o: &opts::Opts, target: &str, h: &Header) -> Res<(String, String)> {
    let (src_fs, src_snap) = h.toname.split_once('@').unwrap_or((&h.toname, ""));
    if let Some((fs, s)) = target.split_once('@') {
        return Ok((fs.to_string(), s.to_string()));
    }
    let mut fs = target.to_string();
    if o.has('d') {
        if let Some((_, rest)) = src_fs.split_once('/') {
            fs = format!("{fs}/{rest}");
        }
    } else if o.has('e') {
        fs = format!("{fs}/{}", src_fs.rsplit('/').next().unwrap_or(src_fs));
    }
    if let Some(rel) = h.relpath.as_deref().filter(|r| !r.is_empty()) {
        fs = format!("{fs}/{rel}");
    }
    DatasetName::parse(&fs)
        .map_err(|e| Fail::new(1, format!("cannot receive: invalid name '{fs}': {e}")))?;
    Ok((fs, src_snap.to_string()))
}

/// The checks zfs makes before it reads the payload; `-F` rollbacks happen here.
fn begin(
    store: &Store,
    st: &mut State,
    o: &opts::Opts,
    h: &Header,
    fs: &str,
    snap: &str,
) -> Res<Target> {
    let k = kind(h);
    let mut t = Target {
        fs: fs.into(),
        snap: snap.into(),
        new_fs: h.is_full(),
        origin: None,
        prefix: Vec::new(),
        skip: false,
    };
    let exists = st.datasets.get(fs);
    // Real zfs opens the pool first (golden case 068).
    let pool = fs.split('/').next().unwrap_or(fs);
    if exists.is_none() && st.ds(pool).is_none() {
        return fail(format!(
            "cannot open '{pool}': dataset does not exist\ncannot receive {k} stream: unable to restore to destination"
        ));
    }
    if h.resuming {
        let p = exists.and_then(|d| d.partial.as_ref()).ok_or_else(|| {
            Fail::new(1, format!("cannot receive resume stream: destination {fs} does not contain partially-complete state"))
        })?;
        if p.toguid != h.toguid || p.offset != h.resume_offset {
            return fail(format!("cannot receive resume stream: stream does not match the partially-complete state of {fs}"));
        }
        t.new_fs = exists.map(|d| d.inconsistent).unwrap_or(true);
        t.origin = exists.and_then(|d| d.origin.clone());
        t.prefix = std::fs::read(store.partial_path(&p.ops_file)).unwrap_or_default();
        if t.prefix.len() as u64 != p.offset.min(h.ops_len) {
            return fail(format!(
                "cannot receive resume stream: partial state of {fs} is damaged"
            ));
        }
        return Ok(t);
    }
    if h.is_full() {
        if let Some(d) = exists {
            if !o.has('F') || d.inconsistent {
                return fail(format!("cannot receive new filesystem stream: destination '{fs}' exists\nmust specify -F to overwrite it"));
            }
            if let Some(s) = d.snapshots.first() {
                return fail(format!("cannot receive new filesystem stream: destination has snapshots (eg. {fs}@{})\nmust destroy them to overwrite it", s.name));
            }
            if d.partial.is_some() {
                return fail(format!("cannot receive new filesystem stream: destination {fs} contains partially-complete state from \"zfs receive -s\"."));
            }
        } else {
            check_parent(st, fs, k)?;
        }
        return Ok(t);
    }
    let Some(d) = exists.filter(|d| !d.inconsistent) else {
        // An incremental into a missing filesystem is a clone of the
        // snapshot with the stream's source guid, if the pool has one.
        let pool = fs.split('/').next().unwrap_or(fs);
        let origin = st
            .datasets
            .iter()
            .filter(|(n, _)| n.split('/').next() == Some(pool))
            .find_map(|(n, d)| {
                d.snapshots
                    .iter()
                    .find(|s| s.guid == h.fromguid)
                    .map(|s| format!("{n}@{}", s.name))
            });
        match origin {
            Some(origin) => {
                check_parent(st, fs, k)?;
                t.new_fs = true;
                t.origin = Some(origin);
                return Ok(t);
            }
            None => {
                return fail(format!(
                    "cannot receive incremental stream: destination '{fs}' does not exist"
                ))
            }
        }
    };
    if d.snapshots.iter().any(|s| s.guid == h.toguid) {
        t.skip = true;
        return Ok(t);
    }
    if d.snapshot(snap).is_some() {
        return fail(format!(
            "cannot restore to {fs}@{snap}: destination already exists"
        ));
    }
    if d.partial.is_some() {
        return fail(format!("cannot receive incremental stream: destination {fs} contains partially-complete state from \"zfs receive -s\"."));
    }
    let latest = d.latest().map(|s| s.guid);
    if latest != Some(h.fromguid) {
        let base = d
            .snapshots
            .iter()
            .find(|s| s.guid == h.fromguid)
            .map(|s| s.createtxg);
        match base {
            Some(txg) if o.has('F') => rollback_to(store, st, fs, txg)?,
            _ => {
                return fail(format!(
                    "cannot receive incremental stream: most recent snapshot of {fs} does not\nmatch incremental source"
                ))
            }
        }
    }
    if modified(store, st, fs)? {
        if !o.has('F') {
            return fail(format!("cannot receive incremental stream: destination {fs} has been modified\nsince most recent snapshot"));
        }
        let txg = st.datasets[fs].latest().map(|s| s.createtxg).unwrap_or(0);
        rollback_to(store, st, fs, txg)?;
    }
    Ok(t)
}

fn check_parent(st: &State, fs: &str, k: &str) -> Res<()> {
    match fs.rsplit_once('/') {
        Some((parent, _)) if st.ds(parent).is_none() => fail(format!(
            "cannot receive {k} stream: destination '{fs}' does not exist"
        )),
        None => fail(format!(
            "cannot receive {k} stream: destination '{fs}' exists\nmust specify -F to overwrite it"
        )),
        _ => Ok(()),
    }
}

fn modified(store: &Store, st: &State, fs: &str) -> Res<bool> {
    let d = &st.datasets[fs];
    let Some(latest) = d.latest() else {
        return Ok(false);
    };
    if d.synthetic != latest.synthetic {
        return Ok(true);
    }
    let now = tree::capture(store, &store.mountpoint(st, fs), false)?;
    Ok(now != tree::get_manifest(store, &latest.manifest)?)
}

/// `receive -F`: destroy snapshots after `txg` and restore its files.
fn rollback_to(store: &Store, st: &mut State, fs: &str, txg: u64) -> Res<()> {
    let d = &st.datasets[fs];
    for s in d.snapshots.iter().filter(|s| s.createtxg > txg) {
        let full = format!("{fs}@{}", s.name);
        if !s.holds.is_empty() {
            return fail(format!("cannot destroy snapshot {full}: dataset is busy"));
        }
        if !st.clones_of(&full).is_empty() {
            return fail(format!(
                "cannot destroy '{full}': snapshot has dependent clones"
            ));
        }
    }
    let d = st.datasets.get_mut(fs).expect("exists");
    d.snapshots.retain(|s| s.createtxg <= txg);
    let Some((synthetic, manifest)) = d.latest().map(|l| (l.synthetic, l.manifest.clone())) else {
        return Ok(());
    };
    d.synthetic = synthetic;
    let m = tree::get_manifest(store, &manifest)?;
    tree::materialize(store, &store.mountpoint(st, fs), &m)
}

fn receive_one(
    store: &Store,
    o: &opts::Opts,
    target: &str,
    h: &Header,
    r: &mut dyn Read,
    report: &mut Report,
) -> Res<()> {
    let (fs, snap) = target_names(o, target, h)?;
    let mut t = store.transact(|st| begin(store, st, o, h, &fs, &snap))?;
    if o.has('v') && !t.skip {
        let k = if h.is_full() { "full" } else { "incremental" };
        println!("receiving {k} stream of {} into {fs}@{snap}", h.toname);
    }
    let started = Instant::now();
    let mut ops = std::mem::take(&mut t.prefix);
    let mut off = h.resume_offset;
    let result = read_payload(h, r, &mut ops, &mut off);
    if !t.skip {
        report
            .fed
            .push((format!("{fs}@{snap}"), h.resume_offset, off));
    }
    if let Err(e) = result {
        return interrupted(store, o, h, &t, &ops, off, &e);
    }
    if t.skip || o.has('n') {
        return Ok(());
    }
    crate::faults::commit_delay();
    store.transact(|st| commit(store, st, o, h, &t, &ops))?;
    if o.has('v') {
        let secs = started.elapsed().as_secs().max(1);
        let bytes = stream::substream_len(h);
        println!(
            "received {} stream in {secs} seconds ({}/sec)",
            nicenum(bytes),
            nicenum(bytes / secs)
        );
    }
    Ok(())
}

/// Reads records, verifying each; ops bytes are kept, synthetic bytes checked.
fn read_payload(
    h: &Header,
    r: &mut dyn Read,
    ops: &mut Vec<u8>,
    off: &mut u64,
) -> Result<(), StreamError> {
    let mut buf = Vec::new();
    let mut scratch = Vec::new();
    let mut total = Xxh3::new();
    let seed = h.synthetic.map(|s| s.seed).unwrap_or(0);
    loop {
        match stream::read_record(r, &mut buf)? {
            Record::Data(d) => {
                if *off + d.len() as u64 > h.payload_len {
                    return Err(StreamError::Corrupt(
                        "invalid stream (record past end)".into(),
                    ));
                }
                total.update(d);
                let mut d = d;
                if *off < h.ops_len {
                    let n = ((h.ops_len - *off) as usize).min(d.len());
                    ops.extend_from_slice(&d[..n]);
                    *off += n as u64;
                    d = &d[n..];
                }
                if !d.is_empty() {
                    if !synth::verify(seed, *off - h.ops_len, d, &mut scratch) {
                        return Err(StreamError::Corrupt("checksum mismatch".into()));
                    }
                    *off += d.len() as u64;
                }
            }
            Record::End { bytes, sum } => {
                let expected = h.payload_len - h.resume_offset;
                if bytes != expected || *off != h.payload_len || sum != total.digest() {
                    return Err(StreamError::Corrupt("checksum mismatch".into()));
                }
                return Ok(());
            }
        }
    }
}

fn interrupted(
    store: &Store,
    o: &opts::Opts,
    h: &Header,
    t: &Target,
    ops: &[u8],
    off: u64,
    e: &StreamError,
) -> Res<()> {
    let k = kind(h);
    if !o.has('s') || t.skip {
        let why = match e {
            StreamError::Incomplete if !h.resuming => "incomplete stream".to_string(),
            _ => "checksum mismatch or incomplete stream".to_string(),
        };
        return fail(format!("cannot receive {k} stream: {why}"));
    }
    let tok = store.transact(|st| {
        let ops_file = format!("{}.ops", h.toguid);
        std::fs::write(store.partial_path(&ops_file), ops)
            .map_err(|e| Fail::new(1, format!("cannot save partial state: {e}")))?;
        if !st.datasets.contains_key(&t.fs) {
            let mut d = new_dataset(st, t.origin.clone());
            d.inconsistent = true;
            d.mounted = false;
            st.datasets.insert(t.fs.clone(), d);
        }
        let d = st.datasets.get_mut(&t.fs).expect("exists");
        let p = Partial {
            toguid: h.toguid,
            toname: h.toname.clone(),
            fromguid: h.fromguid,
            offset: off,
            header: serde_json::to_string(h).expect("serialises"),
            ops_file,
        };
        let tok = token::encode(&p);
        d.partial = Some(p);
        Ok(tok)
    })?;
    fail(format!(
        "cannot receive {k} stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.\nA resuming stream can be generated on the sending system by running:\n    zfs send -t {tok}"
    ))
}

fn commit(
    store: &Store,
    st: &mut State,
    o: &opts::Opts,
    h: &Header,
    t: &Target,
    ops: &[u8],
) -> Res<()> {
    let (mut base, base_synth) = if h.is_full() {
        (Manifest::new(), None)
    } else {
        base_of(store, st, t, h.fromguid)?
    };
    let mut store_err = None;
    stream::apply_ops(ops, &mut base, &mut |hash, data| {
        tree::put_blob(store, hash, data).map_err(|e| {
            let m = e.msg.clone();
            store_err = Some(e);
            m
        })
    })
    .map_err(|e| {
        Fail::new(
            1,
            format!("cannot receive {} stream: invalid stream ({e})", kind(h)),
        )
    })?;
    let _ = base_synth;
    let manifest = tree::put_manifest(store, &base)?;
    let referenced = tree::total_size(&base) + h.synthetic.map(|s| s.size).unwrap_or(0);
    if !st.datasets.contains_key(&t.fs) || (h.is_full() && !st.datasets[&t.fs].inconsistent) {
        let existing_snaps = st
            .datasets
            .get(&t.fs)
            .map(|d| !d.snapshots.is_empty())
            .unwrap_or(false);
        if existing_snaps {
            return fail(format!(
                "cannot receive new filesystem stream: destination has snapshots (eg. {}@)",
                t.fs
            ));
        }
        if let Some(p) = DatasetName::parse(&t.fs).ok().and_then(|d| d.parent()) {
            create_parents(st, &p)?;
        }
        let d = new_dataset(st, t.origin.clone());
        st.datasets.insert(t.fs.clone(), d);
    }
    let txg = st.next_txg();
    let prev = match st.datasets.get(&t.fs).and_then(|d| d.latest()) {
        Some(p) => tree::get_manifest(store, &p.manifest)?,
        None => Manifest::new(),
    };
    let written = tree::changed_size(&prev, &base);
    let d: &mut Dataset = st.datasets.get_mut(&t.fs).expect("exists");
    if let Some(p) = d.partial.take() {
        let _ = std::fs::remove_file(store.partial_path(&p.ops_file));
    }
    d.inconsistent = false;
    if t.new_fs && d.origin.is_none() {
        d.origin = t.origin.clone();
    }
    d.synthetic = h.synthetic;
    d.mounted = !o.has('u');
    if h.raw {
        if let Some(f) = &h.encrypted {
            d.encryption = Some(crate::state::Encryption {
                root: t.fs.clone(),
                keyformat: f.clone(),
                key_loaded: false,
            });
        }
    }
    let excluded: Vec<&str> = o.values('x');
    for (k, v) in &h.props {
        if !excluded.contains(&k.as_str())
            && !d.props.get(k).is_some_and(|p| p.source == Source::Local)
        {
            d.props.insert(
                k.clone(),
                PropVal {
                    value: v.clone(),
                    source: Source::Received,
                },
            );
        }
    }
    for s in o.values('o') {
        if let Some((k, v)) = s.split_once('=') {
            d.props.insert(
                k.into(),
                PropVal {
                    value: v.into(),
                    source: Source::Local,
                },
            );
        }
    }
    d.snapshots.push(Snapshot {
        name: t.snap.clone(),
        guid: h.toguid,
        createtxg: txg,
        creation: h.creation,
        manifest,
        synthetic: h.synthetic,
        holds: Default::default(),
        props: Default::default(),
        written,
        referenced,
    });
    tree::materialize(store, &store.mountpoint(st, &t.fs), &base)
}

fn base_of(
    store: &Store,
    st: &State,
    t: &Target,
    fromguid: u64,
) -> Res<(Manifest, Option<crate::state::Synthetic>)> {
    let from_fs = st
        .datasets
        .get(&t.fs)
        .and_then(|d| d.snapshots.iter().find(|s| s.guid == fromguid));
    let from_origin = t.origin.as_ref().and_then(|o| st.snap(o)).map(|(_, s)| s);
    let s = from_fs
        .or(from_origin)
        .ok_or_else(|| Fail::new(1, format!("cannot receive incremental stream: most recent snapshot of {} does not\nmatch incremental source", t.fs)))?;
    Ok((tree::get_manifest(store, &s.manifest)?, s.synthetic))
}

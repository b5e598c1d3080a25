//! `zfs send`: full, incremental (-i/-I, from snapshots or bookmarks),
//! replication (-R), resume (-t), and the -n/-v/-P estimates.

use std::collections::BTreeMap;
use std::io::Write;

use crate::fail::{fail, Fail, Res};
use crate::faults::FaultyOut;
use crate::opts;
use crate::state::{Dataset, Source, State, Store, Synthetic};
use crate::stream::{self, Header};
use crate::synth;
use crate::token;
use crate::tree::{self, Manifest};

/// One substream to produce.
struct Part {
    header: Header,
    from_manifest: Option<String>,
    to_manifest: String,
    /// How `-nvP` names the source of this part.
    from_label: String,
}

fn usage(e: String) -> Fail {
    Fail::new(2, e)
}

/// `@b`, `#b`, `fs@b`, `fs#b` relative to `fs`: (guid, name, manifest, synthetic, txg).
fn resolve_from(
    d: &Dataset,
    fs: &str,
    from: &str,
    st: &State,
) -> Res<(u64, String, String, Option<Synthetic>, u64)> {
    let full = if from.starts_with('@') || from.starts_with('#') {
        format!("{fs}{from}")
    } else {
        from.to_string()
    };
    let missing = || Fail::new(1, format!("cannot open '{full}': dataset does not exist"));
    if let Some((ffs, s)) = full.split_once('@') {
        let src = if ffs == fs {
            d
        } else {
            st.ds(ffs).ok_or_else(missing)?
        };
        let origin_ok = d.origin.as_deref() == Some(full.as_str());
        if ffs != fs && !origin_ok {
            return fail(format!("cannot send '{fs}': incremental source ({full}) is not earlier than it, or is not an origin"));
        }
        let s = src.snapshot(s).ok_or_else(missing)?;
        let txg = if origin_ok { 0 } else { s.createtxg };
        return Ok((s.guid, full.clone(), s.manifest.clone(), s.synthetic, txg));
    }
    if let Some((ffs, b)) = full.split_once('#') {
        if ffs != fs {
            return fail(format!(
                "cannot send '{fs}': incremental source must be in same filesystem"
            ));
        }
        let b = d.bookmark(b).ok_or_else(missing)?;
        return Ok((
            b.guid,
            full.clone(),
            b.manifest.clone(),
            b.synthetic,
            b.createtxg,
        ));
    }
    fail(format!(
        "cannot send '{fs}': invalid incremental source '{from}'"
    ))
}

fn sent_props(d: &Dataset) -> BTreeMap<String, String> {
    d.props
        .iter()
        .filter(|(k, v)| *k != "fakezfs:synthetic" && v.source == Source::Local)
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn part(
    store: &Store,
    d: &Dataset,
    fs: &str,
    to: &str,
    from: Option<(u64, String, String, Option<Synthetic>)>,
    from_label: String,
    o: &opts::Opts,
    relpath: Option<String>,
) -> Res<Part> {
    let s = d.snapshot(to).expect("caller checked");
    let (fromguid, fromname, from_manifest, from_synth) = match from {
        Some((g, n, m, sy)) => (g, n, Some(m), sy),
        None => (0, String::new(), None, None),
    };
    let to_m = tree::get_manifest(store, &s.manifest)?;
    let from_m = match &from_manifest {
        Some(id) => tree::get_manifest(store, id)?,
        None => Manifest::new(),
    };
    let ops_len = stream::encode_ops(&from_m, &to_m, &mut |_| Vec::new()).len() as u64
        + changed_file_bytes(&from_m, &to_m);
    let synth_sent = s
        .synthetic
        .filter(|sy| fromguid == 0 || Some(*sy) != from_synth);
    let raw = o.has('w');
    let props = if o.has('p') || o.has('R') {
        sent_props(d)
    } else {
        BTreeMap::new()
    };
    Ok(Part {
        header: Header {
            version: 1,
            toname: format!("{fs}@{to}"),
            toguid: s.guid,
            fromguid,
            fromname,
            creation: s.creation,
            ops_len,
            payload_len: ops_len + synth_sent.map(|s| s.size).unwrap_or(0),
            resume_offset: 0,
            resuming: false,
            raw,
            synthetic: s.synthetic,
            props,
            encrypted: d
                .encryption
                .as_ref()
                .filter(|_| raw)
                .map(|e| e.keyformat.clone()),
            relpath,
        },
        from_manifest,
        to_manifest: s.manifest.clone(),
        from_label,
    })
}

fn changed_file_bytes(from: &Manifest, to: &Manifest) -> u64 {
    to.iter()
        .filter(|(k, v)| from.get(*k) != Some(v))
        .map(|(_, v)| v.size())
        .sum()
}

/// The parts of `fs@to`, incremental from `from` when given (`-I`: every
/// snapshot in between).
fn plan_one(
    store: &Store,
    st: &State,
    fs: &str,
    to: &str,
    o: &opts::Opts,
    relpath: Option<String>,
) -> Res<Vec<Part>> {
    let d = st.ds(fs).ok_or_else(|| {
        Fail::new(
            1,
            format!("cannot open '{fs}@{to}': dataset does not exist"),
        )
    })?;
    let to_snap = d.snapshot(to).ok_or_else(|| {
        Fail::new(
            1,
            format!("cannot open '{fs}@{to}': dataset does not exist"),
        )
    })?;
    let (from_arg, all) = match (o.value('i'), o.value('I')) {
        (_, Some(f)) => (Some(f), true),
        (Some(f), None) => (Some(f), false),
        (None, None) => (None, o.has('R')),
    };
    let mut parts = Vec::new();
    let Some(from) = from_arg else {
        if !all {
            return Ok(vec![part(
                store,
                d,
                fs,
                to,
                None,
                String::new(),
                o,
                relpath,
            )?]);
        }
        // -R without -I: a full stream of the first snapshot, then the rest.
        let first = d.snapshots.first().expect("has to_snap").name.clone();
        parts.push(part(
            store,
            d,
            fs,
            &first,
            None,
            String::new(),
            o,
            relpath.clone(),
        )?);
        let mut prev = d.snapshots.first().expect("exists");
        for s in d
            .snapshots
            .iter()
            .skip(1)
            .filter(|s| s.createtxg <= to_snap.createtxg)
        {
            let f = (
                prev.guid,
                format!("{fs}@{}", prev.name),
                prev.manifest.clone(),
                prev.synthetic,
            );
            parts.push(part(
                store,
                d,
                fs,
                &s.name,
                Some(f),
                prev.name.clone(),
                o,
                relpath.clone(),
            )?);
            prev = s;
        }
        return Ok(parts);
    };
    let (guid, name, manifest, synth, txg) = resolve_from(d, fs, from, st)?;
    if txg >= to_snap.createtxg && txg != 0 {
        return fail(format!(
            "warning: cannot send '{fs}@{to}': not an earlier snapshot from the same fs"
        ));
    }
    if guid == to_snap.guid {
        return fail(format!(
            "warning: cannot send '{fs}@{to}': not an earlier snapshot from the same fs"
        ));
    }
    if !all {
        let f = (guid, name.clone(), manifest, synth);
        return Ok(vec![part(store, d, fs, to, Some(f), name, o, relpath)?]);
    }
    if name.contains('#') {
        return fail(format!(
            "cannot send '{fs}@{to}': bookmarks may not be used with -I"
        ));
    }
    let mut prev = (guid, name.clone(), manifest, synth);
    let mut label = name
        .rsplit_once('@')
        .map(|(_, s)| s.to_string())
        .unwrap_or(name);
    for s in d
        .snapshots
        .iter()
        .filter(|s| s.createtxg > txg && s.createtxg <= to_snap.createtxg)
    {
        parts.push(part(
            store,
            d,
            fs,
            &s.name,
            Some(prev.clone()),
            label.clone(),
            o,
            relpath.clone(),
        )?);
        prev = (
            s.guid,
            format!("{fs}@{}", s.name),
            s.manifest.clone(),
            s.synthetic,
        );
        label = s.name.clone();
    }
    Ok(parts)
}

fn plan(store: &Store, st: &State, o: &opts::Opts) -> Res<Vec<Part>> {
    let [snap] = &o.operands[..] else {
        return Err(usage("missing snapshot argument".into()));
    };
    let (fs, to) = snap
        .split_once('@')
        .ok_or_else(|| Fail::new(1, format!("cannot open '{snap}': dataset does not exist")))?;
    if !o.has('R') {
        return plan_one(store, st, fs, to, o, None);
    }
    let mut parts = plan_one(store, st, fs, to, o, Some(String::new()))?;
    for child in st.descendants(fs) {
        if st.ds(&child).and_then(|d| d.snapshot(to)).is_some() {
            let rel = child[fs.len() + 1..].to_string();
            parts.extend(plan_one(store, st, &child, to, o, Some(rel))?);
        }
    }
    Ok(parts)
}

fn plan_resume(store: &Store, st: &State, tok: &str) -> Res<(Vec<Part>, token::Token)> {
    let t = token::decode(tok)
        .ok_or_else(|| Fail::new(1, "cannot resume send: resume token is corrupt"))?;
    let (fs, to) = t.toname.split_once('@').unwrap_or((&t.toname, ""));
    let gone = || {
        Fail::new(
            1,
            format!(
                "cannot resume send: '{}' used in the initial send no longer exists",
                t.toname
            ),
        )
    };
    let d = st.ds(fs).ok_or_else(gone)?;
    let s = d
        .snapshots
        .iter()
        .find(|s| s.guid == t.toguid)
        .ok_or_else(gone)?;
    if s.name != to {
        return fail(format!(
            "cannot resume send: '{}' is no longer the same snapshot used in the initial send",
            t.toname
        ));
    }
    let from = if t.fromguid == 0 {
        None
    } else {
        let origin = d.origin.as_ref().and_then(|o| st.snap(o)).map(|(_, s)| s);
        let f = d
            .snapshots
            .iter()
            .find(|x| x.guid == t.fromguid)
            .map(|x| {
                (
                    x.guid,
                    format!("{fs}@{}", x.name),
                    x.manifest.clone(),
                    x.synthetic,
                )
            })
            .or_else(|| {
                d.bookmarks.iter().find(|b| b.guid == t.fromguid).map(|b| {
                    (
                        b.guid,
                        format!("{fs}#{}", b.name),
                        b.manifest.clone(),
                        b.synthetic,
                    )
                })
            })
            .or_else(|| {
                origin.filter(|x| x.guid == t.fromguid).map(|x| {
                    (
                        x.guid,
                        d.origin.clone().unwrap_or_default(),
                        x.manifest.clone(),
                        x.synthetic,
                    )
                })
            });
        Some(f.ok_or_else(|| {
            Fail::new(
                1,
                format!(
                    "cannot resume send: incremental source {:#x} no longer exists",
                    t.fromguid
                ),
            )
        })?)
    };
    let label = from.as_ref().map(|f| f.1.clone()).unwrap_or_default();
    let noopts = opts::parse(&[], "").expect("empty");
    let mut p = part(store, d, fs, &s.name, from, label, &noopts, None)?;
    if t.offset > p.header.payload_len {
        return fail("cannot resume send: resume token offset is beyond the end of the stream");
    }
    p.header.resume_offset = t.offset;
    p.header.resuming = true;
    Ok((vec![p], t))
}

fn print_estimates(parts: &[Part], o: &opts::Opts, tok: Option<&token::Token>, to_stderr: bool) {
    let mut out = String::new();
    if let Some(t) = tok {
        out.push_str("resume token contents:\nnvlist version: 0\n");
        if t.fromguid != 0 {
            out.push_str(&format!("\tfromguid = {:#x}\n", t.fromguid));
        }
        out.push_str(&format!(
            "\tobject = 0x2\n\toffset = {:#x}\n\tbytes = {:#x}\n\ttoguid = {:#x}\n\ttoname = {}\n",
            t.offset, t.offset, t.toguid, t.toname
        ));
    }
    let mut total = 0;
    for (i, p) in parts.iter().enumerate() {
        // The stream terminator is counted with the last part, so the
        // estimate is the exact number of bytes `zfs send` will write.
        let end = if i + 1 == parts.len() {
            stream::END.len() as u64
        } else {
            0
        };
        let size = stream::substream_len(&p.header) + end;
        total += size;
        let h = &p.header;
        let line = match (o.has('P'), h.is_full()) {
            (true, true) => format!("full\t{}\t{size}\n", h.toname),
            (true, false) => format!("incremental\t{}\t{}\t{size}\n", p.from_label, h.toname),
            (false, true) => format!(
                "full send of {} estimated size is {}\n",
                h.toname,
                syncoid_rsync_core::units::nicenum(size)
            ),
            (false, false) => format!(
                "send from {} to {} estimated size is {}\n",
                p.from_label,
                h.toname,
                syncoid_rsync_core::units::nicenum(size)
            ),
        };
        out.push_str(&line);
    }
    if o.has('P') {
        out.push_str(&format!("size\t{total}\n"));
    } else {
        out.push_str(&format!(
            "total estimated size is {}\n",
            syncoid_rsync_core::units::nicenum(total)
        ));
    }
    if to_stderr {
        eprint!("{out}");
    } else {
        print!("{out}");
    }
}

pub fn send(args: &[String]) -> Res<u64> {
    let o = opts::parse(args, "DnPpRvLecwhbSVi:I:t:").map_err(usage)?;
    let store = Store::from_env()?;
    let st = store.read()?;
    let (parts, tok) = match o.value('t') {
        Some(t) => {
            let (p, t) = plan_resume(&store, &st, t)?;
            (p, Some(t))
        }
        None => (plan(&store, &st, &o)?, None),
    };
    drop(st);
    if o.has('n') {
        if o.has('v') || o.has('P') {
            print_estimates(&parts, &o, tok.as_ref(), false);
        }
        return Ok(0);
    }
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(1) } == 1 {
        return fail(
            "Error: Stream can not be written to a terminal.\nYou must redirect standard output.",
        );
    }
    if o.has('v') {
        print_estimates(&parts, &o, tok.as_ref(), true);
    }
    let mut out = FaultyOut::stdout()?;
    let what = parts
        .first()
        .map(|p| p.header.toname.clone())
        .unwrap_or_default();
    let r = write_parts(&store, &parts, &mut out);
    match r {
        Ok(()) => Ok(out.written()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Err(Fail::new(crate::faults::SIGPIPE_STATUS, String::new()))
        }
        Err(e) => fail(format!(
            "warning: cannot send '{what}': {}",
            crate::faults::describe(&e)
        )),
    }
}

fn write_parts(store: &Store, parts: &[Part], out: &mut FaultyOut) -> std::io::Result<()> {
    for p in parts {
        let to_m = tree::get_manifest(store, &p.to_manifest).map_err(to_io)?;
        let from_m = match &p.from_manifest {
            Some(id) => tree::get_manifest(store, id).map_err(to_io)?,
            None => Manifest::new(),
        };
        let mut blob_err = None;
        let ops = stream::encode_ops(&from_m, &to_m, &mut |h| {
            tree::get_blob(store, h).unwrap_or_else(|e| {
                blob_err = Some(e);
                Vec::new()
            })
        });
        if let Some(e) = blob_err {
            return Err(to_io(e));
        }
        debug_assert_eq!(ops.len() as u64, p.header.ops_len);
        let seed = p.header.synthetic.map(|s| s.seed).unwrap_or(0);
        let ops_len = p.header.ops_len;
        stream::write_substream(out, &p.header, &mut |off, buf| {
            fill_payload(&ops, ops_len, seed, off, buf);
            buf.len()
        })?;
    }
    out.write_all(stream::END)?;
    out.flush()
}

fn fill_payload(ops: &[u8], ops_len: u64, seed: u64, off: u64, buf: &mut [u8]) {
    let mut filled = 0;
    if off < ops_len {
        let n = ((ops_len - off) as usize).min(buf.len());
        buf[..n].copy_from_slice(&ops[off as usize..off as usize + n]);
        filled = n;
    }
    if filled < buf.len() {
        let soff = off + filled as u64 - ops_len;
        synth::fill(seed, soff, &mut buf[filled..]);
    }
}

fn to_io(f: Fail) -> std::io::Error {
    std::io::Error::other(f.msg)
}

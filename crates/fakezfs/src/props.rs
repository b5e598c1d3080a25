//! Property values as `zfs get` and `zfs list` show them: computed,
//! local, received, inherited and default, raw (`-p`) or human.

use std::path::Path;
use syncoid_rsync_core::units::nicenum;

use crate::state::{Dataset, Snapshot, Source, State, Store};
use crate::tree;

/// Settable properties: name, default value, inheritable.
pub const SETTABLE: &[(&str, &str, bool)] = &[
    ("quota", "none", false),
    ("reservation", "none", false),
    ("recordsize", "131072", true),
    ("mountpoint", "", true),
    ("sharenfs", "off", true),
    ("checksum", "on", true),
    ("compression", "off", true),
    ("atime", "on", true),
    ("devices", "on", true),
    ("exec", "on", true),
    ("setuid", "on", true),
    ("readonly", "off", true),
    ("zoned", "off", true),
    ("snapdir", "hidden", true),
    ("aclmode", "discard", true),
    ("aclinherit", "restricted", true),
    ("canmount", "on", false),
    ("xattr", "on", true),
    ("copies", "1", true),
    ("vscan", "off", true),
    ("nbmand", "off", true),
    ("sharesmb", "off", true),
    ("refquota", "none", false),
    ("refreservation", "none", false),
    ("primarycache", "all", true),
    ("secondarycache", "all", true),
    ("logbias", "latency", true),
    ("dedup", "off", true),
    ("mlslabel", "none", true),
    ("sync", "standard", true),
    ("dnodesize", "legacy", true),
    ("volmode", "default", true),
    ("filesystem_limit", "none", false),
    ("snapshot_limit", "none", false),
    ("snapdev", "hidden", true),
    ("acltype", "off", true),
    ("context", "none", false),
    ("fscontext", "none", false),
    ("defcontext", "none", false),
    ("rootcontext", "none", false),
    ("relatime", "off", true),
    ("redundant_metadata", "all", true),
    ("overlay", "on", true),
    ("keylocation", "none", false),
    ("special_small_blocks", "0", true),
];

/// Read-only and create-time properties we compute.
pub const COMPUTED: &[&str] = &[
    "name",
    "type",
    "creation",
    "used",
    "available",
    "referenced",
    "compressratio",
    "mounted",
    "origin",
    "createtxg",
    "version",
    "utf8only",
    "normalization",
    "casesensitivity",
    "guid",
    "usedbysnapshots",
    "usedbydataset",
    "usedbychildren",
    "usedbyrefreservation",
    "objsetid",
    "refcompressratio",
    "written",
    "logicalused",
    "logicalreferenced",
    "filesystem_count",
    "snapshot_count",
    "receive_resume_token",
    "encryption",
    "keyformat",
    "pbkdf2iters",
    "encryptionroot",
    "keystatus",
    "userrefs",
    "defer_destroy",
    "clones",
];

/// The order `zfs get all` prints a filesystem's properties in (2.1.11).
const ALL_FS: &[&str] = &[
    "type",
    "creation",
    "used",
    "available",
    "referenced",
    "compressratio",
    "mounted",
    "origin",
    "quota",
    "reservation",
    "recordsize",
    "mountpoint",
    "sharenfs",
    "checksum",
    "compression",
    "atime",
    "devices",
    "exec",
    "setuid",
    "readonly",
    "zoned",
    "snapdir",
    "aclmode",
    "aclinherit",
    "createtxg",
    "canmount",
    "xattr",
    "copies",
    "version",
    "utf8only",
    "normalization",
    "casesensitivity",
    "vscan",
    "nbmand",
    "sharesmb",
    "refquota",
    "refreservation",
    "guid",
    "primarycache",
    "secondarycache",
    "usedbysnapshots",
    "usedbydataset",
    "usedbychildren",
    "usedbyrefreservation",
    "logbias",
    "objsetid",
    "dedup",
    "mlslabel",
    "sync",
    "dnodesize",
    "refcompressratio",
    "written",
    "logicalused",
    "logicalreferenced",
    "volmode",
    "filesystem_limit",
    "snapshot_limit",
    "filesystem_count",
    "snapshot_count",
    "snapdev",
    "acltype",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "relatime",
    "redundant_metadata",
    "overlay",
    "encryption",
    "keylocation",
    "keyformat",
    "pbkdf2iters",
    "encryptionroot",
    "keystatus",
    "receive_resume_token",
    "special_small_blocks",
];

const ALL_SNAP: &[&str] = &[
    "type",
    "creation",
    "used",
    "referenced",
    "compressratio",
    "devices",
    "exec",
    "setuid",
    "createtxg",
    "xattr",
    "version",
    "utf8only",
    "normalization",
    "casesensitivity",
    "nbmand",
    "guid",
    "primarycache",
    "secondarycache",
    "defer_destroy",
    "userrefs",
    "objsetid",
    "mlslabel",
    "refcompressratio",
    "written",
    "clones",
    "logicalreferenced",
    "acltype",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "encryption",
    "encryptionroot",
    "keystatus",
];

const ALL_MARK: &[&str] = &[
    "type",
    "creation",
    "guid",
    "createtxg",
    "encryption",
    "redact_snaps",
];

pub fn is_known(prop: &str) -> bool {
    prop.contains(':')
        || COMPUTED.contains(&prop)
        || SETTABLE.iter().any(|(p, _, _)| *p == prop)
        || matches!(
            prop,
            "volsize" | "volblocksize" | "redact_snaps" | "keystatus"
        )
}

pub fn is_readonly(prop: &str) -> bool {
    !prop.contains(':') && !SETTABLE.iter().any(|(p, _, _)| *p == prop)
}

pub fn is_numeric(prop: &str) -> bool {
    matches!(
        prop,
        "used"
            | "available"
            | "referenced"
            | "usedbysnapshots"
            | "usedbydataset"
            | "usedbychildren"
            | "usedbyrefreservation"
            | "written"
            | "logicalused"
            | "logicalreferenced"
            | "createtxg"
            | "guid"
            | "creation"
            | "recordsize"
            | "objsetid"
            | "userrefs"
            | "quota"
            | "reservation"
            | "refquota"
            | "refreservation"
    )
}

/// A thing that has properties.
pub enum Obj<'a> {
    Fs(&'a str, &'a Dataset),
    Snap(&'a str, &'a Dataset, &'a Snapshot),
    Mark(&'a str, &'a Dataset, &'a crate::state::Bookmark),
}

impl Obj<'_> {
    pub fn name(&self) -> String {
        match self {
            Obj::Fs(n, _) => n.to_string(),
            Obj::Snap(n, _, s) => format!("{n}@{}", s.name),
            Obj::Mark(n, _, b) => format!("{n}#{}", b.name),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Obj::Fs(_, d) if d.volume => "volume",
            Obj::Fs(..) => "filesystem",
            Obj::Snap(..) => "snapshot",
            Obj::Mark(..) => "bookmark",
        }
    }
    pub fn fs(&self) -> &str {
        match self {
            Obj::Fs(n, _) | Obj::Snap(n, _, _) | Obj::Mark(n, _, _) => n,
        }
    }
    pub fn createtxg(&self) -> u64 {
        match self {
            Obj::Fs(_, d) => d.createtxg,
            Obj::Snap(_, _, s) => s.createtxg,
            Obj::Mark(_, _, b) => b.createtxg,
        }
    }
}

pub struct Ctx<'a> {
    pub store: &'a Store,
    pub st: &'a State,
}

/// Property names `zfs get all` shows for `obj`, user properties last.
pub fn all_names(ctx: &Ctx, obj: &Obj) -> Vec<String> {
    let base: &[&str] = match obj {
        Obj::Fs(..) => ALL_FS,
        Obj::Snap(..) => ALL_SNAP,
        Obj::Mark(..) => ALL_MARK,
    };
    let mut names: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    if let Obj::Fs(_, d) = obj {
        if d.origin.is_none() {
            names.retain(|n| n != "origin");
        }
        if d.partial.is_none() {
            names.retain(|n| n != "receive_resume_token");
        }
        if d.encryption.is_none() {
            names.retain(|n| n != "encryptionroot" && n != "keystatus");
        }
    }
    let mut user = std::collections::BTreeSet::new();
    let mut fs = Some(obj.fs().to_string());
    if let Obj::Snap(_, _, s) = obj {
        user.extend(s.props.keys().filter(|k| k.contains(':')).cloned());
    }
    while let Some(name) = fs {
        if let Some(d) = ctx.st.datasets.get(&name) {
            user.extend(d.props.keys().filter(|k| k.contains(':')).cloned());
        }
        fs = name.rsplit_once('/').map(|(p, _)| p.to_string());
    }
    names.extend(user);
    names
}

fn size(v: u64, parsable: bool) -> String {
    if parsable {
        v.to_string()
    } else {
        nicenum(v)
    }
}

/// A date as `zfs get` prints it, OpenZFS's `strftime("%a %b %e %k:%M
/// %Y")`: `Fri Nov 27 12:16 2026`, `Sat Nov 28  0:44 2026` (day and hour
/// padded with a space, not a zero; UTC).
pub fn human_date(epoch: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    let (y, m, d) = syncoid_rsync_core::syncsnap::civil_from_days(days);
    format!(
        "{} {} {:>2} {:>2}:{:02} {}",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs % 3600 / 60,
        y
    )
}

const FS_OVERHEAD: u64 = 98304;

pub fn fs_referenced(d: &Dataset) -> u64 {
    let synth = d.synthetic.map(|s| s.size).unwrap_or(0);
    let snap = d.latest().map(|s| s.referenced).unwrap_or(0);
    FS_OVERHEAD + snap.max(synth)
}

fn snaps_used(d: &Dataset) -> u64 {
    d.snapshots.iter().skip(1).map(|s| s.written).sum()
}

pub fn fs_used(st: &State, name: &str) -> u64 {
    let Some(d) = st.datasets.get(name) else {
        return 0;
    };
    fs_referenced(d) + snaps_used(d) + children_used(st, name)
}

fn children_used(st: &State, name: &str) -> u64 {
    st.descendants(name)
        .iter()
        .filter(|c| !c[name.len() + 1..].contains('/'))
        .map(|c| fs_used(st, c))
        .sum()
}

fn available(st: &State, name: &str) -> u64 {
    let pool = name.split('/').next().unwrap_or(name);
    let size = st.pools.get(pool).map(|p| p.size).unwrap_or(0);
    size.saturating_sub(fs_used(st, pool))
}

/// The inherited/local/received/default value and its source.
fn lookup(ctx: &Ctx, fs: &str, prop: &str) -> Option<(String, String)> {
    let inheritable = prop.contains(':') || SETTABLE.iter().any(|(p, _, i)| *p == prop && *i);
    let mut cur = Some(fs.to_string());
    let mut first = true;
    while let Some(name) = cur {
        if let Some(v) = ctx.st.datasets.get(&name).and_then(|d| d.props.get(prop)) {
            let src = match (first, &v.source) {
                (true, Source::Local) => "local".to_string(),
                (true, Source::Received) => "received".to_string(),
                (false, _) => format!("inherited from {name}"),
            };
            return Some((v.value.clone(), src));
        }
        if !inheritable {
            break;
        }
        first = false;
        cur = name.rsplit_once('/').map(|(p, _)| p.to_string());
    }
    None
}

fn settable(ctx: &Ctx, obj: &Obj, prop: &str, parsable: bool) -> Option<(String, String)> {
    let (_, default, _) = SETTABLE.iter().find(|(p, _, _)| *p == prop)?;
    if prop == "mountpoint" {
        let Obj::Fs(name, _) = obj else { return None };
        let path = ctx.store.mountpoint(ctx.st, name);
        let src = lookup(ctx, name, prop)
            .map(|(_, s)| s)
            .unwrap_or("default".into());
        return Some((path.display().to_string(), src));
    }
    let (v, src) = lookup(ctx, obj.fs(), prop).unwrap_or((default.to_string(), "default".into()));
    let v = if !parsable && is_numeric(prop) && v != "0" {
        v.parse::<u64>().map(nicenum).unwrap_or(v)
    } else {
        v
    };
    Some((v, src))
}

/// Value and source of `prop` on `obj`, or `None` when it does not apply.
pub fn get(ctx: &Ctx, obj: &Obj, prop: &str, parsable: bool) -> Option<(String, String)> {
    let ro = |v: String| Some((v, "-".to_string()));
    if prop.contains(':') {
        if let Obj::Snap(_, _, s) = obj {
            if let Some(v) = s.props.get(prop) {
                return Some((v.value.clone(), "local".into()));
            }
        }
        return Some(lookup(ctx, obj.fs(), prop).unwrap_or(("-".into(), "-".into())));
    }
    match (prop, obj) {
        ("name", _) => ro(obj.name()),
        ("type", _) => ro(obj.kind().into()),
        ("creation", _) => {
            let t = match obj {
                Obj::Fs(_, d) => d.creation,
                Obj::Snap(_, _, s) => s.creation,
                Obj::Mark(_, _, b) => b.creation,
            };
            ro(if parsable {
                t.to_string()
            } else {
                human_date(t)
            })
        }
        ("createtxg", _) => ro(obj.createtxg().to_string()),
        ("guid", Obj::Fs(_, d)) => ro(d.guid.to_string()),
        ("guid", Obj::Snap(_, _, s)) => ro(s.guid.to_string()),
        ("guid", Obj::Mark(_, _, b)) => ro(b.guid.to_string()),
        ("used", Obj::Fs(n, _)) => ro(size(fs_used(ctx.st, n), parsable)),
        ("used", Obj::Snap(_, _, s)) => ro(size(s.written, parsable)),
        ("available", Obj::Fs(n, _)) => ro(size(available(ctx.st, n), parsable)),
        ("referenced" | "logicalreferenced", Obj::Fs(_, d)) => ro(size(fs_referenced(d), parsable)),
        ("referenced" | "logicalreferenced", Obj::Snap(_, _, s)) => {
            ro(size(s.referenced, parsable))
        }
        ("logicalused", Obj::Fs(n, _)) => ro(size(fs_used(ctx.st, n), parsable)),
        ("usedbydataset", Obj::Fs(_, d)) => ro(size(fs_referenced(d), parsable)),
        ("usedbysnapshots", Obj::Fs(_, d)) => ro(size(snaps_used(d), parsable)),
        ("usedbychildren", Obj::Fs(n, _)) => ro(size(children_used(ctx.st, n), parsable)),
        ("usedbyrefreservation", Obj::Fs(..)) => ro(size(0, parsable)),
        ("compressratio" | "refcompressratio", Obj::Fs(..) | Obj::Snap(..)) => ro(if parsable {
            "1.00".into()
        } else {
            "1.00x".into()
        }),
        ("mounted", Obj::Fs(_, d)) => ro(if d.mounted { "yes" } else { "no" }.into()),
        ("origin", Obj::Fs(_, d)) => ro(d.origin.clone().unwrap_or("-".into())),
        ("version", Obj::Fs(..) | Obj::Snap(..)) => ro("5".into()),
        ("utf8only", Obj::Fs(..) | Obj::Snap(..)) => ro("off".into()),
        ("normalization", Obj::Fs(..) | Obj::Snap(..)) => ro("none".into()),
        ("casesensitivity", Obj::Fs(..) | Obj::Snap(..)) => ro("sensitive".into()),
        ("objsetid", Obj::Fs(_, d)) => ro((d.guid % 1000 + 54).to_string()),
        ("objsetid", Obj::Snap(_, _, s)) => ro((s.guid % 1000 + 54).to_string()),
        ("written", Obj::Snap(_, _, s)) => ro(size(s.written, parsable)),
        ("written", Obj::Fs(n, d)) => ro(size(fs_written(ctx, n, d), parsable)),
        ("filesystem_count" | "snapshot_count", Obj::Fs(..)) => {
            Some(("none".into(), "default".into()))
        }
        ("receive_resume_token", Obj::Fs(_, d)) => ro(d
            .partial
            .as_ref()
            .map(crate::token::encode)
            .unwrap_or("-".into())),
        ("encryption", Obj::Fs(_, d)) if d.encryption.is_some() => ro("aes-256-gcm".into()),
        ("encryption", Obj::Fs(..)) => Some(("off".into(), "default".into())),
        ("encryption", Obj::Snap(_, d, _) | Obj::Mark(_, d, _)) => ro(if d.encryption.is_some() {
            "aes-256-gcm".into()
        } else {
            "off".into()
        }),
        ("keyformat", Obj::Fs(_, d)) => match &d.encryption {
            Some(e) => ro(e.keyformat.clone()),
            None => Some(("none".into(), "default".into())),
        },
        ("pbkdf2iters", Obj::Fs(_, d)) => match &d.encryption {
            Some(_) => ro("350000".into()),
            None => Some(("0".into(), "default".into())),
        },
        ("encryptionroot", Obj::Fs(_, d) | Obj::Snap(_, d, _)) => ro(d
            .encryption
            .as_ref()
            .map(|e| e.root.clone())
            .unwrap_or("-".into())),
        ("keystatus", Obj::Fs(_, d) | Obj::Snap(_, d, _)) => ro(match &d.encryption {
            Some(e) if e.key_loaded => "available".into(),
            Some(_) => "unavailable".into(),
            None => "-".into(),
        }),
        ("keylocation", Obj::Fs(_, d)) if d.encryption.is_some() => {
            Some(lookup(ctx, obj.fs(), prop).unwrap_or(("prompt".into(), "local".into())))
        }
        ("userrefs", Obj::Snap(_, _, s)) => ro(s.holds.len().to_string()),
        ("defer_destroy", Obj::Snap(..)) => ro("off".into()),
        ("clones", Obj::Snap(..)) => ro(ctx.st.clones_of(&obj.name()).join(",")),
        ("redact_snaps", Obj::Mark(..)) => ro("-".into()),
        (_, Obj::Fs(..)) => settable(ctx, obj, prop, parsable),
        (
            "devices" | "exec" | "setuid" | "xattr" | "nbmand" | "primarycache" | "secondarycache"
            | "mlslabel" | "acltype" | "context" | "fscontext" | "defcontext" | "rootcontext",
            Obj::Snap(..),
        ) => settable(ctx, obj, prop, parsable).map(|(v, s)| {
            let s = if s == "default" {
                s
            } else {
                format!("inherited from {}", obj.fs())
            };
            (v, s)
        }),
        _ => None,
    }
}

/// Bytes changed in the live filesystem since its latest snapshot.
fn fs_written(ctx: &Ctx, name: &str, d: &Dataset) -> u64 {
    let dir = ctx.store.mountpoint(ctx.st, name);
    let Ok(now) = tree::capture(ctx.store, Path::new(&dir), false) else {
        return 0;
    };
    let base = match d.latest() {
        Some(s) => tree::get_manifest(ctx.store, &s.manifest).unwrap_or_default(),
        None => Default::default(),
    };
    tree::changed_size(&base, &now)
}

#[cfg(test)]
mod tests {
    use super::human_date;

    #[test]
    fn dates_pad_day_and_hour_with_spaces_as_strftime_e_and_k_do() {
        // 2026-11-27 12:16 UTC, 2026-11-28 00:44 UTC, 2026-12-01 09:05 UTC.
        assert_eq!(human_date(1_795_781_760), "Fri Nov 27 12:16 2026");
        assert_eq!(human_date(1_795_826_640), "Sat Nov 28  0:44 2026");
        assert_eq!(human_date(1_796_115_900), "Tue Dec  1  9:05 2026");
    }
}

//! Which datasets, snapshots and bookmarks a `list`/`get` names, in the
//! order zfs prints them: by dataset name component by component, then
//! filesystems before snapshots before bookmarks, snapshots by createtxg.

use std::cmp::Ordering;

use crate::fail::Fail;
use crate::props::Obj;
use crate::state::State;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjId {
    Fs(String),
    Snap(String, String),
    Mark(String, String),
}

#[derive(Debug, Clone, Copy)]
pub struct Types {
    pub fs: bool,
    pub vol: bool,
    pub snap: bool,
    pub mark: bool,
}

impl Types {
    pub const ALL: Types = Types {
        fs: true,
        vol: true,
        snap: true,
        mark: true,
    };
    pub const DATASETS: Types = Types {
        fs: true,
        vol: true,
        snap: false,
        mark: false,
    };

    pub fn parse(s: &str) -> Result<Types, String> {
        let mut t = Types {
            fs: false,
            vol: false,
            snap: false,
            mark: false,
        };
        for w in s.split(',') {
            match w {
                "filesystem" => t.fs = true,
                "volume" => t.vol = true,
                "snapshot" | "snap" => t.snap = true,
                "bookmark" => t.mark = true,
                "all" => t = Types::ALL,
                _ => return Err(format!("invalid type '{w}'")),
            }
        }
        Ok(t)
    }
}

impl ObjId {
    pub fn resolve<'a>(&self, st: &'a State) -> Option<Obj<'a>> {
        match self {
            ObjId::Fs(n) => st.datasets.get_key_value(n).map(|(k, d)| Obj::Fs(k, d)),
            ObjId::Snap(n, s) => {
                let (k, d) = st.datasets.get_key_value(n)?;
                Some(Obj::Snap(k, d, d.snapshot(s)?))
            }
            ObjId::Mark(n, b) => {
                let (k, d) = st.datasets.get_key_value(n)?;
                Some(Obj::Mark(k, d, d.bookmark(b)?))
            }
        }
    }

    fn fs(&self) -> &str {
        match self {
            ObjId::Fs(n) | ObjId::Snap(n, _) | ObjId::Mark(n, _) => n,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            ObjId::Fs(_) => 0,
            ObjId::Snap(..) => 1,
            ObjId::Mark(..) => 2,
        }
    }
}

/// The zfs name order used when no `-s` is given.
pub fn name_order(st: &State, a: &ObjId, b: &ObjId) -> Ordering {
    let ca = a.fs().split('/');
    let cb = b.fs().split('/');
    ca.cmp(cb).then(a.rank().cmp(&b.rank())).then_with(|| {
        let ta = a.resolve(st).map(|o| o.createtxg()).unwrap_or(0);
        let tb = b.resolve(st).map(|o| o.createtxg()).unwrap_or(0);
        ta.cmp(&tb)
    })
}

/// Everything at depth <= `depth` below (and including) dataset `root`.
fn walk(st: &State, root: &str, depth: u32, types: Types, out: &mut Vec<ObjId>) {
    let base = root.matches('/').count() as u32;
    let mut names = vec![root.to_string()];
    names.extend(st.descendants(root));
    for name in names {
        let Some(d) = st.ds(&name) else { continue };
        let level = name.matches('/').count() as u32 - base;
        if level > depth {
            continue;
        }
        if (d.volume && types.vol) || (!d.volume && types.fs) {
            out.push(ObjId::Fs(name.clone()));
        }
        if level < depth {
            if types.snap {
                out.extend(
                    d.snapshots
                        .iter()
                        .map(|s| ObjId::Snap(name.clone(), s.name.clone())),
                );
            }
            if types.mark {
                out.extend(
                    d.bookmarks
                        .iter()
                        .map(|b| ObjId::Mark(name.clone(), b.name.clone())),
                );
            }
        }
    }
}

/// Resolves operands into objects. Errors are printed per operand by the
/// caller; the objects found are returned either way.
pub fn select(
    st: &State,
    operands: &[String],
    depth: Option<u32>,
    types: Types,
) -> (Vec<ObjId>, Vec<Fail>) {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    if operands.is_empty() {
        for pool in st.pools.keys() {
            walk(st, pool, depth.unwrap_or(u32::MAX), types, &mut out);
        }
    }
    for op in operands {
        match parse_operand(st, op) {
            Err(e) => errs.push(e),
            Ok(id @ (ObjId::Snap(..) | ObjId::Mark(..))) => out.push(id),
            Ok(ObjId::Fs(n)) => {
                let only_children = !types.fs && !types.vol && depth.is_none();
                let d = depth.unwrap_or(if only_children { 1 } else { 0 });
                walk(st, &n, d, types, &mut out);
            }
        }
    }
    out.sort_by(|a, b| name_order(st, a, b));
    out.dedup();
    (out, errs)
}

pub fn not_found(name: &str) -> Fail {
    Fail::new(1, format!("cannot open '{name}': dataset does not exist"))
}

pub fn parse_operand(st: &State, op: &str) -> Result<ObjId, Fail> {
    let bad = || {
        Fail::new(
            1,
            format!(
                "cannot open '{op}': empty component or misplaced '@' or '#' delimiter in name"
            ),
        )
    };
    if op.is_empty() || op.ends_with('@') || op.ends_with('#') || op.starts_with('@') {
        return Err(bad());
    }
    let id = if let Some((fs, s)) = op.split_once('@') {
        ObjId::Snap(fs.to_string(), s.to_string())
    } else if let Some((fs, b)) = op.split_once('#') {
        ObjId::Mark(fs.to_string(), b.to_string())
    } else {
        ObjId::Fs(op.to_string())
    };
    if syncoid_rsync_core::names::DatasetName::parse(id.fs()).is_err() {
        return Err(bad());
    }
    let exists = match &id {
        ObjId::Fs(n) => st.ds(n).is_some(),
        _ => id.resolve(st).is_some(),
    };
    if exists {
        Ok(id)
    } else {
        Err(not_found(op))
    }
}

//! `zfs list` and `zfs get`.

use crate::cmd::select::{select, ObjId, Types};
use crate::fail::{Fail, Res};
use crate::opts;
use crate::props::{self, Ctx};
use crate::state::Store;

const GET_USAGE: &str = include_str!("../get_usage.txt");

fn usage_err(msg: &str) -> Fail {
    Fail::new(2, format!("{msg}\n{}", GET_USAGE.trim_end()))
}

fn depth(o: &opts::Opts) -> Res<Option<u32>> {
    if let Some(d) = o.value('d') {
        return d
            .parse()
            .map(Some)
            .map_err(|_| usage_err(&format!("invalid depth '{d}'")));
    }
    Ok(o.has('r').then_some(u32::MAX))
}

/// Prints rows as zfs does: tab-separated with `-H`, else padded columns
/// under a header (numeric columns right-aligned, the last unpadded).
fn print_table(header: Option<Vec<String>>, right: &[bool], rows: &[Vec<String>], scripted: bool) {
    let mut out = String::new();
    if scripted {
        for r in rows {
            out.push_str(&r.join("\t"));
            out.push('\n');
        }
        print!("{out}");
        return;
    }
    let header = header.unwrap_or_default();
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == cols && !right[i] {
                line.push_str(c);
            } else if right[i] {
                line.push_str(&format!("{c:>w$}", w = widths[i]));
            } else {
                line.push_str(&format!("{c:<w$}", w = widths[i]));
            }
            if i + 1 < cols {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    print!("{out}");
}

fn column_title(prop: &str) -> String {
    match prop {
        "available" | "avail" => "AVAIL".into(),
        "referenced" | "refer" => "REFER".into(),
        p => p.to_uppercase(),
    }
}

fn canonical(prop: &str) -> &str {
    match prop {
        "avail" => "available",
        "refer" => "referenced",
        "compress" => "compression",
        "reservation" | "refreservation" => prop,
        p => p,
    }
}

pub fn list(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "Hprd:t:o:s:S:").map_err(|e| Fail::new(2, e))?;
    let store = Store::from_env()?;
    let st = store.read()?;
    let types = match o.value('t') {
        Some(t) => Types::parse(t).map_err(|e| Fail::new(2, e))?,
        None => Types::DATASETS,
    };
    let cols: Vec<String> = o
        .value('o')
        .unwrap_or("name,used,available,referenced,mountpoint")
        .split(',')
        .map(|c| canonical(c).to_string())
        .collect();
    for c in &cols {
        if !props::is_known(c) {
            return Err(Fail::new(2, format!("invalid field '{c}'")));
        }
    }
    let (mut ids, errs) = select(&st, &o.operands, depth(&o)?, types);
    sort_by_columns(&store, &st, &o, &mut ids);
    let ctx = Ctx {
        store: &store,
        st: &st,
    };
    let rows: Vec<Vec<String>> = ids
        .iter()
        .filter_map(|id| id.resolve(&st))
        .map(|obj| {
            cols.iter()
                .map(|c| {
                    props::get(&ctx, &obj, c, o.has('p'))
                        .map(|(v, _)| v)
                        .unwrap_or("-".into())
                })
                .collect()
        })
        .collect();
    let header = cols.iter().map(|c| column_title(c)).collect();
    let right: Vec<bool> = cols
        .iter()
        .map(|c| props::is_numeric(c) && c != "guid")
        .collect();
    if !rows.is_empty() || errs.is_empty() {
        if rows.is_empty() && !o.has('H') {
            if errs.is_empty() {
                eprintln!("no datasets available");
            }
        } else {
            let rows = if o.has('H') {
                rows
            } else {
                pad_refer(&cols, rows)
            };
            print_table(Some(header), &right, &rows, o.has('H'));
        }
    }
    report(errs)
}

/// 2.1 gives the REFER column at least 8 characters (seen in `zfs list`).
fn pad_refer(cols: &[String], mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    if let Some(i) = cols.iter().position(|c| c == "referenced") {
        if let Some(r) = rows.first_mut() {
            r[i] = format!("{:>8}", r[i]);
        }
    }
    rows
}

fn sort_by_columns(store: &Store, st: &crate::state::State, o: &opts::Opts, ids: &mut [ObjId]) {
    let keys: Vec<(String, bool)> = o
        .flags
        .iter()
        .filter(|(f, _)| *f == 's' || *f == 'S')
        .filter_map(|(f, v)| v.clone().map(|v| (canonical(&v).to_string(), *f == 'S')))
        .collect();
    if keys.is_empty() {
        return;
    }
    let ctx = Ctx { store, st };
    let value = |id: &ObjId, prop: &str| -> (u64, String) {
        let v = id
            .resolve(st)
            .and_then(|obj| props::get(&ctx, &obj, prop, true))
            .map(|(v, _)| v)
            .unwrap_or_default();
        (v.parse().unwrap_or(0), v)
    };
    ids.sort_by(|a, b| {
        for (k, desc) in &keys {
            let (na, sa) = value(a, k);
            let (nb, sb) = value(b, k);
            let ord = if props::is_numeric(k) {
                na.cmp(&nb)
            } else {
                sa.cmp(&sb)
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        crate::cmd::select::name_order(st, a, b)
    });
}

/// Prints each operand error; the exit status is 1 if there was any.
pub fn report(errs: Vec<Fail>) -> Res<()> {
    let n = errs.len();
    for e in errs {
        eprintln!("{}", e.msg);
    }
    if n > 0 {
        Err(Fail::new(1, ""))
    } else {
        Ok(())
    }
}

pub fn get(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "Hprd:t:o:s:").map_err(|e| usage_err(&e))?;
    let Some((proplist, operands)) = o.operands.split_first() else {
        return Err(usage_err("missing property argument"));
    };
    if proplist.is_empty() {
        return Err(usage_err("bad property list: no properties specified"));
    }
    let store = Store::from_env()?;
    let st = store.read()?;
    let types = match o.value('t') {
        Some(t) => Types::parse(t).map_err(|e| usage_err(&e))?,
        None => Types::ALL,
    };
    let fields: Vec<String> = o
        .value('o')
        .unwrap_or("name,property,value,source")
        .split(',')
        .map(String::from)
        .collect();
    let fields = if fields == ["all"] {
        vec![
            "name".into(),
            "property".into(),
            "value".into(),
            "received".into(),
            "source".into(),
        ]
    } else {
        fields
    };
    let sources: Option<Vec<&str>> = o.value('s').map(|s| s.split(',').collect());
    let (ids, errs) = select(&st, operands, depth(&o)?, types);
    let ctx = Ctx {
        store: &store,
        st: &st,
    };
    let mut rows = Vec::new();
    for obj in ids.iter().filter_map(|id| id.resolve(&st)) {
        let names: Vec<String> = if proplist == "all" {
            props::all_names(&ctx, &obj)
        } else {
            proplist
                .split(',')
                .map(|p| canonical(p).to_string())
                .collect()
        };
        for p in names {
            if !props::is_known(&p) {
                return Err(usage_err(&format!(
                    "bad property list: invalid property '{p}'"
                )));
            }
            let Some((value, source)) = props::get(&ctx, &obj, &p, o.has('p')) else {
                if proplist == "all" {
                    continue;
                }
                rows.push(row(&fields, &obj.name(), &p, "-", "-"));
                continue;
            };
            if let Some(s) = &sources {
                let kind = source.split(' ').next().unwrap_or("");
                let kind = if kind == "-" { "none" } else { kind };
                if !s.contains(&kind) {
                    continue;
                }
            }
            rows.push(row(&fields, &obj.name(), &p, &value, &source));
        }
    }
    let header: Vec<String> = fields.iter().map(|f| f.to_uppercase()).collect();
    let right = vec![false; fields.len()];
    if !rows.is_empty() {
        print_table(Some(header), &right, &rows, o.has('H'));
    }
    report(errs)
}

fn row(fields: &[String], name: &str, prop: &str, value: &str, source: &str) -> Vec<String> {
    fields
        .iter()
        .map(|f| match f.as_str() {
            "name" => name.to_string(),
            "property" => prop.to_string(),
            "value" => value.to_string(),
            "received" => "-".to_string(),
            "source" => source.to_string(),
            _ => "-".to_string(),
        })
        .collect()
}

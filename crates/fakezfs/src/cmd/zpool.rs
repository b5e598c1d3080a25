//! `zpool`: create, list, get, destroy. Pools have no vdevs here; a pool is
//! its root dataset plus a size.

use std::fs;

use crate::cmd::manage::new_dataset;
use crate::fail::{fail, Fail, Res};
use crate::opts;
use crate::state::{new_guid, now, Pool, Store};
use syncoid_rsync_core::units::{nicenum, parse_size};

const DEFAULT_SIZE: u64 = 1 << 40;

fn usage(e: String) -> Fail {
    Fail::new(2, e)
}

pub fn main(args: &[String]) -> Res<()> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(usage("usage: zpool command args ...".into()));
    };
    match cmd.as_str() {
        "create" => create(rest),
        "destroy" => destroy(rest),
        "list" => list(rest),
        "get" => get(rest),
        "version" => {
            println!("zfs-2.1.11-1+deb12u1\nzfs-kmod-2.1.11-1+deb12u1");
            Ok(())
        }
        other => Err(usage(format!("unrecognized command '{other}'"))),
    }
}

fn create(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "fndo:O:m:R:t:").map_err(usage)?;
    let Some(name) = o.operands.first() else {
        return Err(usage("missing pool name argument".into()));
    };
    if name.contains('/') || name.is_empty() {
        return fail(format!(
            "cannot create '{name}': invalid character '/' in pool name"
        ));
    }
    let size = o
        .values('o')
        .iter()
        .find_map(|v| v.strip_prefix("size=").and_then(parse_size))
        .unwrap_or(DEFAULT_SIZE);
    let store = Store::from_env()?;
    store.transact(|st| {
        if st.pools.contains_key(name) {
            return fail(format!("cannot create '{name}': pool already exists"));
        }
        st.pools.insert(
            name.clone(),
            Pool {
                guid: new_guid(),
                size,
                creation: now(),
            },
        );
        let d = new_dataset(st, None);
        st.datasets.insert(name.clone(), d);
        fs::create_dir_all(store.mountpoint(st, name))
            .map_err(|e| Fail::new(1, format!("cannot mount '{name}': {e}")))
    })
}

fn destroy(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "f").map_err(usage)?;
    let Some(name) = o.operands.first() else {
        return Err(usage("missing pool argument".into()));
    };
    let store = Store::from_env()?;
    store.transact(|st| {
        if st.pools.remove(name).is_none() {
            return fail(format!("cannot open '{name}': no such pool"));
        }
        let mp = store.mountpoint(st, name);
        let mut names = vec![name.clone()];
        names.extend(st.descendants(name));
        for n in names {
            st.datasets.remove(&n);
        }
        let _ = fs::remove_dir_all(mp);
        Ok(())
    })
}

fn pool_prop(st: &crate::state::State, name: &str, prop: &str, parsable: bool) -> Option<String> {
    let p = st.pools.get(name)?;
    let used = crate::props::fs_used(st, name);
    let size = |v: u64| if parsable { v.to_string() } else { nicenum(v) };
    Some(match prop {
        "name" => name.to_string(),
        "size" => size(p.size),
        "alloc" | "allocated" => size(used),
        "free" => size(p.size.saturating_sub(used)),
        "health" => "ONLINE".into(),
        "guid" => p.guid.to_string(),
        "cap" | "capacity" => format!("{}%", used * 100 / p.size.max(1)),
        "dedupratio" => "1.00x".into(),
        "altroot" | "expandsize" | "ckpoint" => "-".into(),
        "frag" | "fragmentation" => "0%".into(),
        f if f.starts_with("feature@") => "active".into(),
        _ => return None,
    })
}

fn list(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "Hpo:gLPvT:").map_err(usage)?;
    let store = Store::from_env()?;
    let st = store.read()?;
    let cols: Vec<&str> = o
        .value('o')
        .unwrap_or("name,size,alloc,free,ckpoint,expandsz,frag,cap,dedup,health,altroot")
        .split(',')
        .collect();
    let names: Vec<String> = if o.operands.is_empty() {
        st.pools.keys().cloned().collect()
    } else {
        o.operands.clone()
    };
    let mut rows = Vec::new();
    for n in &names {
        if !st.pools.contains_key(n) {
            return fail(format!("cannot open '{n}': no such pool"));
        }
        rows.push(
            cols.iter()
                .map(|c| pool_prop(&st, n, c, o.has('p')).unwrap_or("-".into()))
                .collect::<Vec<_>>(),
        );
    }
    if o.has('H') {
        for r in rows {
            println!("{}", r.join("\t"));
        }
    } else {
        println!(
            "{}",
            cols.iter()
                .map(|c| c.to_uppercase())
                .collect::<Vec<_>>()
                .join("  ")
        );
        for r in rows {
            println!("{}", r.join("  "));
        }
    }
    Ok(())
}

fn get(args: &[String]) -> Res<()> {
    let o = opts::parse(args, "Hpo:").map_err(usage)?;
    let Some((props, pools)) = o.operands.split_first() else {
        return Err(usage("missing property argument".into()));
    };
    let store = Store::from_env()?;
    let st = store.read()?;
    let fields: Vec<&str> = o
        .value('o')
        .unwrap_or("name,property,value,source")
        .split(',')
        .collect();
    let pools: Vec<String> = if pools.is_empty() {
        st.pools.keys().cloned().collect()
    } else {
        pools.to_vec()
    };
    let mut out = String::new();
    for pool in &pools {
        if !st.pools.contains_key(pool) {
            return fail(format!("cannot open '{pool}': no such pool"));
        }
        for prop in props.split(',') {
            let value = pool_prop(&st, pool, prop, o.has('p')).unwrap_or("-".into());
            let source = if prop.starts_with("feature@") {
                "local"
            } else {
                "-"
            };
            let row: Vec<&str> = fields
                .iter()
                .map(|f| match *f {
                    "name" => pool.as_str(),
                    "property" => prop,
                    "value" => value.as_str(),
                    "source" => source,
                    _ => "-",
                })
                .collect();
            out.push_str(&row.join(if o.has('H') { "\t" } else { "  " }));
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

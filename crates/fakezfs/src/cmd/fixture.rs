//! `fakezfs fixture mirror-tree SRC DST DATASETS SNAPSHOTS`: builds, in one
//! step, a source tree of DATASETS empty filesystems below SRC with
//! SNAPSHOTS snapshots each, and a replica below DST with the same guids, as
//! if it had been replicated. Creating that many through `zfs` calls would
//! take minutes; benchmarks and scale tests of planning need it in seconds.

use crate::cmd::manage::new_dataset;
use crate::fail::{fail, Fail, Res};
use crate::state::{new_guid, now, Snapshot, Store};
use crate::tree;

pub fn main(args: &[String]) -> Res<()> {
    let [kind, src, dst, n, snaps] = args else {
        return Err(Fail::new(
            2,
            "usage: fakezfs fixture mirror-tree SRC DST DATASETS SNAPSHOTS",
        ));
    };
    if kind != "mirror-tree" {
        return fail(format!("unknown fixture '{kind}'"));
    }
    let n: usize = n
        .parse()
        .map_err(|_| Fail::new(2, "DATASETS must be a number"))?;
    let snaps: usize = snaps
        .parse()
        .map_err(|_| Fail::new(2, "SNAPSHOTS must be a number"))?;
    let store = Store::from_env()?;
    let empty = tree::put_manifest(&store, &Default::default())?;
    store.transact(|st| {
        for root in [src, dst] {
            let pool = root.split('/').next().unwrap_or(root);
            if !st.pools.contains_key(pool) {
                return fail(format!("cannot open '{pool}': no such pool"));
            }
            if st.datasets.contains_key(root.as_str()) {
                return fail(format!("cannot create '{root}': dataset already exists"));
            }
        }
        let mut names = vec![String::new()];
        names.extend((0..n).map(|i| format!("/d{i:05}")));
        for rel in &names {
            let snapshots: Vec<Snapshot> = (0..snaps)
                .map(|i| Snapshot {
                    name: format!("s{i:03}"),
                    guid: new_guid(),
                    createtxg: st.next_txg(),
                    creation: now(),
                    manifest: empty.clone(),
                    synthetic: None,
                    holds: Default::default(),
                    props: Default::default(),
                    written: 0,
                    referenced: 0,
                })
                .collect();
            for root in [src, dst] {
                let mut d = new_dataset(st, None);
                d.snapshots = snapshots.clone();
                st.datasets.insert(format!("{root}{rel}"), d);
            }
        }
        Ok(())
    })
}

//! fakezfs: an OpenZFS 2.1 `zfs`/`zpool` emulator for tests.
//!
//! Called through links named `zfs` or `zpool` (it looks at argv[0]), or as
//! `fakezfs zfs ...` / `fakezfs zpool ...`. State lives in `FAKEZFS_ROOT`.
//! Every invocation is appended to `$FAKEZFS_ROOT/log.jsonl` with its argv,
//! exit status and, for send/receive, the bytes it moved. `fakezfs link DIR`
//! creates the `zfs` and `zpool` links in DIR; `fakezfs fixture ...` builds
//! large test trees in one step (see cmd/fixture.rs).

mod cmd;
mod fail;
mod faults;
mod opts;
mod props;
mod state;
mod stream;
mod synth;
mod token;
mod tree;

use std::io::Write;

use fail::{Fail, Res};

const ZFS_USAGE: &str = "usage: zfs command args ...\nwhere 'command' is one of the following:\n\n\tversion\n\tcreate [-p] [-o property=value] ... <filesystem>\n\tdestroy [-fnpRrv] <filesystem|volume>\n\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...\n\trollback [-rRf] <snapshot>\n\tclone [-p] [-o property=value] ... <snapshot> <filesystem|volume>\n\trename [-f] <filesystem|volume|snapshot> <filesystem|volume|snapshot>\n\tbookmark <snapshot|bookmark> <newbookmark>\n\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]... [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...\n\tset <property=value> ... <filesystem|volume|snapshot> ...\n\tget [-rHp] [-d max] [-o \"all\" | field[,...]] [-t type[,...]] [-s source[,...]] <\"all\" | property[,...]> [filesystem|volume|snapshot|bookmark] ...\n\tinherit [-rS] <property> <filesystem|volume|snapshot> ...\n\tsend [-DnPpRvLecwhb] [-[i|I] snapshot] <snapshot>\n\tsend -t [-nvPe] <token>\n\treceive [-vnsFhu] [-o <property>=<value>] ... [-x <property>] ... <filesystem|volume|snapshot>\n\treceive -A <filesystem|volume>\n\thold [-r] <tag> <snapshot> ...\n\tholds [-rH] <snapshot> ...\n\trelease [-r] <tag> <snapshot> ...";

/// Extra facts for the log line.
#[derive(Default)]
struct Outcome {
    stdout_bytes: Option<u64>,
    recv: Option<cmd::recv::Report>,
}

fn zfs(args: &[String], out: &mut Outcome) -> Res<()> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(Fail::new(2, ZFS_USAGE));
    };
    match sub.as_str() {
        "list" => cmd::list::list(rest),
        "get" => cmd::list::get(rest),
        "set" => cmd::manage::set(rest),
        "inherit" => cmd::manage::inherit(rest),
        "create" => cmd::manage::create(rest),
        "clone" => cmd::manage::clone(rest),
        "snapshot" | "snap" => cmd::manage::snapshot(rest),
        "destroy" => cmd::destroy::destroy(rest),
        "rename" => cmd::manage::rename(rest),
        "rollback" => cmd::manage::rollback(rest),
        "bookmark" => cmd::manage::bookmark(rest),
        "hold" => cmd::manage::hold(rest, false),
        "release" => cmd::manage::hold(rest, true),
        "holds" => cmd::manage::holds(rest),
        "send" => cmd::send::send(rest).map(|n| out.stdout_bytes = Some(n)),
        "receive" | "recv" => {
            let mut report = cmd::recv::Report::default();
            let r = cmd::recv::receive(rest, &mut report);
            out.recv = Some(report);
            r
        }
        "mount" | "unmount" | "umount" | "load-key" | "unload-key" => Ok(()),
        "version" => {
            println!("zfs-2.1.11-1+deb12u1\nzfs-kmod-2.1.11-1+deb12u1");
            Ok(())
        }
        "-?" | "help" => {
            println!("{ZFS_USAGE}");
            Ok(())
        }
        other => Err(Fail::new(
            2,
            format!("unrecognized command '{other}'\n{ZFS_USAGE}"),
        )),
    }
}

fn link(args: &[String]) -> Res<()> {
    let [dir] = args else {
        return Err(Fail::new(2, "usage: fakezfs link DIR"));
    };
    let me = std::env::current_exe().map_err(|e| Fail::new(1, e.to_string()))?;
    for name in ["zfs", "zpool"] {
        let p = std::path::Path::new(dir).join(name);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(&me, &p)
            .map_err(|e| Fail::new(1, format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

fn log(prog: &str, args: &[String], code: i32, out: &Outcome) {
    let Some(root) = std::env::var_os("FAKEZFS_ROOT") else {
        return;
    };
    let mut entry = serde_json::json!({
        "time": state::now(),
        "pid": std::process::id(),
        "prog": prog,
        "argv": args,
        "status": code,
    });
    if let Some(n) = out.stdout_bytes {
        entry["stdout_bytes"] = n.into();
    }
    if let Some(r) = &out.recv {
        entry["stdin_bytes"] = r.stdin_bytes.into();
        entry["fed"] = r
            .fed
            .iter()
            .map(|(s, a, b)| serde_json::json!({"snapshot": s, "from": a, "to": b}))
            .collect();
    }
    let line = format!("{entry}\n");
    let path = std::path::Path::new(&root).join("log.jsonl");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let name = std::path::Path::new(&argv[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (prog, args) = match name.as_str() {
        "zfs" | "zpool" => (name.clone(), argv[1..].to_vec()),
        _ => match argv.get(1).map(String::as_str) {
            Some(p @ ("zfs" | "zpool" | "link" | "fixture")) => (p.to_string(), argv[2..].to_vec()),
            _ => {
                eprintln!("usage: fakezfs zfs|zpool ARGS... | fakezfs link DIR (or call it through a link named zfs or zpool)");
                std::process::exit(2);
            }
        },
    };
    let mut out = Outcome::default();
    let result = match prog.as_str() {
        "zfs" => zfs(&args, &mut out),
        "zpool" => cmd::zpool::main(&args),
        "fixture" => cmd::fixture::main(&args),
        _ => link(&args),
    };
    let code = match &result {
        Ok(()) => 0,
        Err(f) => f.code,
    };
    let _ = std::io::stdout().flush();
    log(&prog, &args, code, &out);
    if let Err(f) = result {
        if f.code == faults::SIGPIPE_STATUS {
            // Die of SIGPIPE as the real zfs send does when its reader goes.
            // SAFETY: restoring the default action and raising a signal.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        if !f.msg.is_empty() {
            eprintln!("{}", f.msg);
        }
        std::process::exit(f.code);
    }
}

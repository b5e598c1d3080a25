//! The man page and shell completions come from the same definitions as
//! `--help`: every long option of `--help` is in each of them, and the
//! completion scripts load in their shells.

mod common;
use common::bin;
use std::process::Command;

fn output(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn long_options(help: &str) -> Vec<String> {
    let re = regex::Regex::new(r"--[a-z][a-z0-9-]+").unwrap();
    let mut v: Vec<String> = re.find_iter(help).map(|m| m.as_str().to_string()).collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn man_page_and_completions_cover_every_option() {
    let help = output(&["--help"]);
    let options = long_options(&help);
    for must in [
        "--rsync",
        "--inactivity-timeout",
        "--source-bwlimit",
        "--recursive",
        "--generate",
    ] {
        assert!(
            options.iter().any(|o| o == must),
            "{must} missing from --help"
        );
    }
    let man = output(&["--generate", "man"]);
    assert!(
        man.contains(".TH syncoid-rsync 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    for kind in ["bash", "zsh", "fish"] {
        let script = output(&["--generate", kind]);
        for o in &options {
            if o == "--help" || o == "--version" {
                continue;
            }
            let flag = o.trim_start_matches("--");
            assert!(script.contains(flag), "{kind} completion lacks {o}");
            if kind == "bash" {
                assert!(man.contains(&o.replace('-', "\\-")), "man page lacks {o}");
            }
        }
    }
    // The bash completion loads and registers itself.
    let script = output(&["--generate", "bash"]);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{script}\ncomplete -p syncoid-rsync"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("syncoid-rsync"));
}

#[test]
fn generate_rejects_unknown_kinds() {
    let out = Command::new(bin())
        .args(["--generate", "pdf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pdf"));
}

//! `--metrics-file=PATH`: a Prometheus text-format file for node_exporter's
//! textfile collector, written at the end of every run (a temporary file in
//! the same directory, then a rename, so the collector never reads half a
//! file). Per dataset: the outcome, bytes, duration, `--rsync` reconnects
//! and bytes sent again, and the time of the last success, which is
//! carried over from the previous file while a dataset fails, so an alert
//! on its age works. Per run: when it ended, how long it took, its exit
//! status. Rendering is pure; only `write` touches the filesystem.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One dataset's result in this run.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub source: String,
    pub target: String,
    /// replicated, up_to_date, skipped, busy or failed.
    pub outcome: &'static str,
    /// Stream bytes received, when they were counted (`--rsync`, or a
    /// standard run with its in-process meter).
    pub bytes: Option<u64>,
    pub seconds: f64,
    pub reconnects: u64,
    pub resent_bytes: u64,
}

/// The run as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub mode: &'static str,
    pub exit_code: i32,
    pub seconds: f64,
    /// Unix time at the end of the run.
    pub ended: f64,
}

const OUTCOMES: [&str; 6] = [
    "replicated",
    "up_to_date",
    "skipped",
    "busy",
    "link_lost",
    "failed",
];
const LAST_SUCCESS: &str = "syncoid_rsync_dataset_last_success_timestamp_seconds";

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(d: &Dataset) -> String {
    format!(
        "source=\"{}\",target=\"{}\"",
        escape(&d.source),
        escape(&d.target)
    )
}

/// The last-success times in a file this module wrote, by label set.
fn last_successes(previous: &str) -> BTreeMap<String, String> {
    previous
        .lines()
        .filter_map(|l| l.strip_prefix(LAST_SUCCESS)?.strip_prefix('{'))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once("} ")?;
            Some((labels.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The file's text. `previous`: the file as the last run left it (empty
/// if none), for the last-success times of datasets that did not succeed
/// now, and of datasets this run did not reach.
pub fn render(run: &Run, datasets: &[Dataset], previous: &str) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, String)>| {
        if rows.is_empty() {
            return;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in rows {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
    };
    let mut success = last_successes(previous);
    for d in datasets {
        if matches!(d.outcome, "replicated" | "up_to_date") {
            success.insert(labels(d), format!("{:.3}", run.ended));
        }
    }
    family(
        LAST_SUCCESS,
        "Unix time of the last run that replicated the dataset or found it up to date.",
        success.into_iter().collect(),
    );
    family(
        "syncoid_rsync_dataset_outcome",
        "1 for the outcome the dataset had in the last run, 0 for the others.",
        datasets
            .iter()
            .flat_map(|d| {
                OUTCOMES.iter().map(move |o| {
                    (
                        format!("{},outcome=\"{o}\"", labels(d)),
                        u8::from(d.outcome == *o).to_string(),
                    )
                })
            })
            .collect(),
    );
    let per = |f: &dyn Fn(&Dataset) -> Option<String>| -> Vec<(String, String)> {
        datasets
            .iter()
            .filter_map(|d| Some((labels(d), f(d)?)))
            .collect()
    };
    family(
        "syncoid_rsync_dataset_bytes",
        "Stream bytes received for the dataset in the last run (where counted).",
        per(&|d| d.bytes.map(|b| b.to_string())),
    );
    family(
        "syncoid_rsync_dataset_duration_seconds",
        "Seconds the dataset took in the last run.",
        per(&|d| Some(format!("{:.3}", d.seconds))),
    );
    if run.mode == "rsync" {
        family(
            "syncoid_rsync_dataset_reconnects",
            "--rsync: reconnections to the agents for the dataset in the last run.",
            per(&|d| Some(d.reconnects.to_string())),
        );
        family(
            "syncoid_rsync_dataset_resent_bytes",
            "--rsync: payload bytes sent again after outages in the last run.",
            per(&|d| Some(d.resent_bytes.to_string())),
        );
    }
    let one = |v: String| vec![(String::new(), v)];
    family(
        "syncoid_rsync_last_run_timestamp_seconds",
        "Unix time the last run ended.",
        one(format!("{:.3}", run.ended)),
    );
    family(
        "syncoid_rsync_last_run_duration_seconds",
        "Seconds the last run took.",
        one(format!("{:.3}", run.seconds)),
    );
    family(
        "syncoid_rsync_last_run_exit_code",
        "Exit status of the last run (README: exit status).",
        one(run.exit_code.to_string()),
    );
    out
}

/// Writes `text` to `path` atomically: a private temporary file in the same
/// directory, flushed to disk, then renamed over `path`.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".syncoid-rsync-metrics-")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    // Readable by the collector, which may run as another user.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(target: &str, outcome: &'static str) -> Dataset {
        Dataset {
            source: "tank/data".into(),
            target: target.into(),
            outcome,
            bytes: Some(1024),
            seconds: 1.5,
            reconnects: 2,
            resent_bytes: 4096,
        }
    }

    fn run(ended: f64, exit_code: i32) -> Run {
        Run {
            mode: "rsync",
            exit_code,
            seconds: 3.0,
            ended,
        }
    }

    #[test]
    fn a_failed_dataset_keeps_its_last_success_time() {
        let first = render(
            &run(100.0, 0),
            &[ds("b/ok", "replicated"), ds("b/x\"y", "replicated")],
            "",
        );
        assert!(
            first.contains("syncoid_rsync_dataset_last_success_timestamp_seconds{source=\"tank/data\",target=\"b/x\\\"y\"} 100.000"),
            "{first}"
        );
        let second = render(
            &run(200.0, 2),
            &[ds("b/ok", "up_to_date"), ds("b/x\"y", "failed")],
            &first,
        );
        assert!(second.contains("target=\"b/ok\"} 200.000"), "{second}");
        assert!(second.contains("target=\"b/x\\\"y\"} 100.000"), "{second}");
        assert!(
            second.contains("target=\"b/x\\\"y\",outcome=\"failed\"} 1"),
            "{second}"
        );
        assert!(
            second.contains("target=\"b/x\\\"y\",outcome=\"replicated\"} 0"),
            "{second}"
        );
        assert!(
            second.contains("syncoid_rsync_last_run_exit_code 2"),
            "{second}"
        );
        assert!(
            second.contains("syncoid_rsync_dataset_resent_bytes{"),
            "{second}"
        );
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let text = render(&run(1.0, 0), &[ds("b/a", "busy"), ds("b/b", "skipped")], "");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}

//! syncoid-rsync: parse, dispatch, and map every outcome to an exit status.

mod again;
mod args;
mod config;
mod gather;
mod host;
mod interrupt;
mod metrics;
mod output;
mod preflight;
mod progress;
mod replicate;
mod rsync;
mod transfer;

use clap::Parser;
use output::exit;

/// Diagnostics for benchmarks: with `SYNCOID_RSYNC_RUSAGE_LOG=FILE`, each
/// process (coordinator, agents) appends `ROLE PID MAX_RSS_KIB MINOR_FAULTS
/// USER_MS SYS_MS` at exit.
pub fn log_rusage(role: &str) {
    let Ok(path) = std::env::var("SYNCOID_RSYNC_RUSAGE_LOG") else {
        return;
    };
    // SAFETY: getrusage fills the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let ms = |t: libc::timeval| t.tv_sec * 1000 + t.tv_usec / 1000;
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(
            f,
            "{role} {} {} {} {} {}",
            std::process::id(),
            ru.ru_maxrss,
            ru.ru_minflt,
            ms(ru.ru_utime),
            ms(ru.ru_stime)
        );
    }
}

fn exit_with(code: i32) -> ! {
    log_rusage("coordinator");
    std::process::exit(code)
}

/// `--metrics-file`: the run's metrics, also when it failed before any
/// dataset (the last success times of earlier runs are kept).
fn write_metrics(
    s: &config::Settings,
    path: &str,
    result: &Result<output::Summary, replicate::Fatal>,
    out: &output::Out,
) {
    let path = std::path::Path::new(path);
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (datasets, exit_code, seconds) = match result {
        Ok(sum) => (sum.datasets.as_slice(), sum.exit_code(), sum.seconds),
        Err(f) => (&[][..], f.code, output::since_start().as_secs_f64()),
    };
    let run = metrics::Run {
        mode: if s.args.rsync { "rsync" } else { "standard" },
        exit_code,
        seconds,
        ended,
    };
    let text = metrics::render(&run, datasets, &previous);
    if let Err(e) = metrics::write(path, &text) {
        out.warn(&format!("--metrics-file {}: {e}", path.display()));
    }
}

/// Locks a mutex whose holder may have panicked (its data stays usable:
/// every holder leaves it whole between statements).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() {
    output::mark_start();
    // Before any thread exists (set_var is not thread-safe): zfs is found
    // in the sbin directories under cron's PATH too, here and in agents.
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    std::env::set_var("PATH", host::with_sbin(&path));
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("agent") {
        std::process::exit(rsync::agent::main(&argv[2..]));
    }
    let argv = match args::getopt_compat(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("syncoid-rsync: {e}");
            eprintln!("Try 'syncoid-rsync --help' for more information.");
            std::process::exit(exit::USAGE);
        }
    };
    let args = match args::Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::USAGE,
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Some(what) = &args.generate {
        let code = match args::generate(what, &mut std::io::stdout()) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("syncoid-rsync: --generate {what}: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    if args.monitor_version && args.source.is_none() {
        println!("OK: syncoid-rsync {}", env!("CARGO_PKG_VERSION"));
        std::process::exit(exit::OK);
    }
    let settings = match config::settings(args, &gather::local_pools) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("syncoid-rsync: {e}");
            eprintln!("Try 'syncoid-rsync --help' for more information.");
            std::process::exit(exit::USAGE);
        }
    };
    let out = output::Out {
        quiet: settings.args.quiet,
        debug: settings.args.debug,
        json: settings.args.json,
    };
    interrupt::install(vec![
        settings.source_host.clone(),
        settings.target_host.clone(),
    ]);
    for note in &settings.notes {
        out.info(note);
    }
    let result = replicate::run(&settings);
    // Whatever the outcome: the ssh masters end now (not ControlPersist
    // later) and the private control directory goes with the settings;
    // std::process::exit below would skip its drop.
    settings.close_ssh();
    out.debug("ssh connections closed");
    let (quiet, json, debug) = (settings.args.quiet, settings.args.json, settings.args.debug);
    let jobs = settings.jobs;
    if let Some(path) = &settings.args.metrics_file {
        write_metrics(&settings, path, &result, &out);
    }
    drop(settings);
    match result {
        Ok(summary) => {
            // On a terminal, always; under cron only when something is
            // wrong (as syncoid, a clean run mails nothing).
            let tty = out.stderr_is_terminal() && !quiet;
            if !json && (summary.failed > 0 || summary.busy > 0 || debug || tty) {
                // Several datasets at once interleave their lines: the
                // outcome of each is listed again, in the plan's order.
                if jobs > 1 && summary.datasets.len() > 1 {
                    for line in summary.outcomes() {
                        eprintln!("  {line}");
                    }
                }
                eprintln!("syncoid-rsync: {}", summary.line());
            }
            exit_with(summary.exit_code());
        }
        Err(f) => {
            out.critical(&f.msg);
            exit_with(f.code);
        }
    }
}

//! syncoid-rsync: parse, dispatch, and map every outcome to an exit status.

mod args;
mod config;
mod gather;
mod host;
mod output;
mod replicate;
mod rsync;
mod transfer;

use clap::Parser;
use output::exit;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("agent") {
        std::process::exit(rsync::agent::main(&argv[2..]));
    }
    let args = match args::Args::try_parse() {
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
    if args.monitor_version {
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
    };
    match replicate::run(&settings) {
        Ok(summary) => {
            if summary.failed > 0 || summary.busy > 0 || settings.args.debug {
                eprintln!("syncoid-rsync: {}", summary.line());
            }
            std::process::exit(summary.exit_code());
        }
        Err(f) => {
            out.critical(&f.msg);
            std::process::exit(f.code);
        }
    }
}

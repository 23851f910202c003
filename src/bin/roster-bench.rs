//! `roster-bench`: parse the command line, run the capacity run, print its JSON report as the
//! last line of stdout. Everything else is in `roster_sync::bench`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = roster_sync::bench::BenchArgs::parse();
    // The daemon's own logs stay at warnings, as a quiet production daemon's would (at info
    // it logs a line per event), unless RUST_LOG asks for more.
    roster_sync::telemetry::init(
        roster_sync::config::LogFormat::Text,
        "warn",
        std::io::stderr,
    );
    let runtime = match args.runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(roster_sync::bench::run(args)) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot encode the report: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

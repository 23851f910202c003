//! The `roster-sync` binary: parse the command line, run it, map failure to a non-zero exit.

use std::io::Write as _;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = roster_sync::cli::Cli::parse();
    match roster_sync::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `writeln!`, not `eprintln!`: with stderr's reader gone the message is lost, but
            // the exit status still says the command failed (a panic would say 101).
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

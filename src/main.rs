//! The `roster-sync` binary: parse the command line, run it, map failure to a non-zero exit.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = roster_sync::cli::Cli::parse();
    match roster_sync::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

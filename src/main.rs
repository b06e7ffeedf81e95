//! The `rosterd` executable: parse the command line and dispatch.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rosterd::cli::Cli::parse();
    match rosterd::commands::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rosterd: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

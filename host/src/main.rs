//! The `tensorlet` binary: parse the command line and run it (the command sets up logging: a
//! node's config says how it logs).

use clap::Parser;

fn main() -> std::process::ExitCode {
    match tensorlet::cli::Cli::parse().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `retake`: the worker and the command line of retake. All logic lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    retake::telemetry::init();
    let cli = retake::cli::Cli::parse();
    match retake::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `retake`: the worker and the command line of retake. All logic lives in the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = retake::cli::Cli::parse();
    if !cli.command.is_service() {
        retake::pipe::die_quietly_on_closed_pipe();
    }
    retake::telemetry::init(cli.command.default_log_filter());
    let runtime = match cli.command.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(retake::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `raftkv-server`: runs one raftkv node. See `raftkv-server --help`.

use std::process::ExitCode;

use clap::Parser;
use raftkv_server::ServerArgs;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    let runtime = match raftkv_server::runtime(&args) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raftkv-server: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(raftkv_server::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

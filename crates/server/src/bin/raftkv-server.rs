//! `raftkv-server`: runs one raftkv node. See `raftkv-server --help`.

use std::process::ExitCode;

use clap::Parser;
use raftkv_server::ServerArgs;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServerArgs::parse();
    match raftkv_server::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftkv-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `adjoint-worker`: a worker process (see [`adjoint_worker::cli`];
//! `adjoint worker` runs the same).

use adjoint_worker::cli::{WorkerArgs, run};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "adjoint-worker",
    version,
    about = "An adjoint worker: trains the jobs a coordinator assigns it"
)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adjoint-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

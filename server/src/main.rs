//! `adjoint-server`: the coordinator binary (see [`adjoint_server::cli`];
//! `adjoint server` runs the same).

use adjoint_server::cli::{ServerArgs, run};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "adjoint-server",
    version,
    about = "The adjoint coordinator: job API, worker control, scheduler"
)]
struct Cli {
    #[command(flatten)]
    args: ServerArgs,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().args)
}

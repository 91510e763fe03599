//! The subcommands of `adjoint`, one file each.

mod check;
mod demo;
mod model;

use clap::{Parser, Subcommand};

/// adjoint: distributed training of model graphs, with reverse-mode
/// autodiff, activation checkpointing and sparse mixture-of-experts
/// gradients.
#[derive(Debug, Parser)]
#[command(name = "adjoint", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(demo::DemoArgs),
    Model(model::ModelArgs),
    Check(check::CheckArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Model(args) => model::run(args),
        Command::Check(args) => check::run(args),
    }
}

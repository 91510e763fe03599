//! The subcommands of `adjoint`, one file each.

mod bench;
mod check;
mod demo;
mod engine;
mod grad;
mod model;
mod train;

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
    Bench(bench::BenchArgs),
    Demo(demo::DemoArgs),
    Grad(grad::GradArgs),
    Train(train::TrainArgs),
    Model(model::ModelArgs),
    Check(check::CheckArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Grad(args) => grad::run(args),
        Command::Train(args) => train::run(args),
        Command::Model(args) => model::run(args),
        Command::Check(args) => check::run(args),
    }
}

//! The subcommands of `adjoint`, one file each.

mod bench;
mod bench_allreduce;
mod bench_profile;
mod check;
mod demo;
mod engine;
mod grad;
mod inspect;
mod jobs;
mod logs;
mod model;
mod plan;
mod service;
mod submit;
mod timeline;
mod train;
mod up;
mod watch;

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
    Submit(submit::SubmitArgs),
    Estimate(submit::EstimateArgs),
    Jobs(jobs::JobsArgs),
    Status(jobs::StatusArgs),
    Watch(watch::WatchArgs),
    Cancel(jobs::CancelArgs),
    Pull(jobs::PullArgs),
    Workers(jobs::WorkersArgs),
    Up(up::UpArgs),
    /// Run a coordinator (the same as the `adjoint-server` binary).
    Server(adjoint_server::cli::ServerArgs),
    /// Run a worker (the same as the `adjoint-worker` binary).
    Worker(adjoint_worker::cli::WorkerArgs),
    Model(model::ModelArgs),
    Check(check::CheckArgs),
    Inspect(inspect::InspectArgs),
    Plan(plan::PlanArgs),
    Logs(logs::LogsArgs),
    Timeline(timeline::TimelineArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Grad(args) => grad::run(args),
        Command::Train(args) => train::run(args),
        Command::Submit(args) => submit::submit(args),
        Command::Estimate(args) => submit::estimate(args),
        Command::Jobs(args) => jobs::jobs(args),
        Command::Status(args) => jobs::status(args),
        Command::Watch(args) => watch::run(args),
        Command::Cancel(args) => jobs::cancel(args),
        Command::Pull(args) => jobs::pull(args),
        Command::Workers(args) => jobs::workers(args),
        Command::Up(args) => up::run(args),
        Command::Server(args) => adjoint_server::cli::run(args),
        Command::Worker(args) => adjoint_worker::cli::run(args).map_err(anyhow::Error::msg),
        Command::Model(args) => model::run(args),
        Command::Check(args) => check::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Timeline(args) => timeline::run(args),
    }
}

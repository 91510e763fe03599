//! `adjoint`: the command-line front door of adjoint.

mod cli;

// Counts heap bytes so `adjoint bench` can report the measured peak beside
// the planned one; the engine allocates nothing inside a step, so training
// does not pay for it.
#[global_allocator]
static ALLOC: adjoint_kernels::alloc_count::CountingAllocator =
    adjoint_kernels::alloc_count::CountingAllocator;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

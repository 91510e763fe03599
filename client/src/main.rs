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
            eprintln!("error: {}", describe(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as a person reads it: a gRPC status by its message (and what
/// to do for the usual transport and credential mistakes), anything else
/// with its causes.
fn describe(err: &anyhow::Error) -> String {
    let Some(status) = err.chain().find_map(|e| e.downcast_ref::<tonic::Status>()) else {
        return format!("{err:#}");
    };
    let context: Vec<String> = err
        .chain()
        .take_while(|e| e.downcast_ref::<tonic::Status>().is_none())
        .map(ToString::to_string)
        .collect();
    let mut out = context.join(": ");
    if !out.is_empty() {
        out.push_str(": ");
    }
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown
            if status.message().contains("transport") || status.message().contains("canceled") =>
        {
            out.push_str("the connection to the coordinator failed");
            if let Some(source) = std::error::Error::source(status) {
                out.push_str(&format!(" ({source})"));
            }
            out.push_str(
                "; if it serves TLS, give --ca-file (or ADJOINT_CA_FILE) or an https:// address",
            );
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            out.push_str(&format!("not allowed: {}", status.message()));
        }
        _ => out.push_str(status.message()),
    }
    out
}

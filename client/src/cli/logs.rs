//! `adjoint logs`: the log lines a job's workers sent, as the coordinator
//! keeps them.

use adjoint_proto::v1::job_event::Kind;
use anyhow::Result;
use clap::Args;
use tokio_stream::StreamExt;

use super::service::{Addr, with_client};

/// Print a job's worker log lines (`rank R: ...`).
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job id.
    job: String,
    /// Keep printing new lines until the job ends.
    #[arg(short, long)]
    follow: bool,
    /// Only this rank's lines.
    #[arg(long)]
    rank: Option<u32>,
    #[command(flatten)]
    addr: Addr,
}

pub fn run(args: LogsArgs) -> Result<()> {
    let prefix = args.rank.map(|r| format!("rank {r}: "));
    with_client(&args.addr, async |client| {
        let mut events = match args.follow {
            true => client.watch(&args.job, 0).await?,
            false => client.history(&args.job, 0).await?,
        };
        while let Some(event) = events.next().await {
            if let Some(Kind::Log(line)) = event?.kind
                && prefix.as_ref().is_none_or(|p| line.starts_with(p.as_str()))
            {
                println!("{line}");
            }
        }
        Ok(())
    })
}

//! `adjoint watch`: a live progress bar of a job until it ends.

use adjoint_proto::v1::{JobState, job_event};
use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;

use super::service::{Addr, human_bytes, with_client};

/// Watch a job: step, loss, samples/s and ETA, until it ends.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job id.
    job: String,
    #[command(flatten)]
    addr: Addr,
}

pub fn run(args: WatchArgs) -> Result<()> {
    watch_job(&args.addr, &args.job).map(|_| ())
}

/// The losses a watched job reported.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Loss of the first step reported, and of the last.
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// The last eval loss reported, and at which step.
    pub last_eval: Option<(u64, f64)>,
    /// Rows per expert in the last step (rank 0), and the expert-gradient
    /// bytes the sparse all-reduce skipped over the whole job.
    pub expert_rows: Vec<u64>,
    pub bytes_saved: u64,
}

/// Streams the job's events into a progress bar; fails if the job does not
/// succeed.
pub fn watch_job(addr: &Addr, id: &str) -> Result<Watched> {
    let (state, reason, watched) = with_client(addr, async |client| {
        let job = client.get_job(id).await?;
        let steps = job.spec.as_ref().map_or(0, |s| s.steps);
        let bar = ProgressBar::new(steps.max(1));
        bar.set_style(ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )?);
        bar.set_message(format!("{id}: {:?}", job.state()));
        let mut events = client.watch(id, 0).await?;
        let mut last = (job.state(), job.reason.clone());
        let mut watched = Watched::default();
        while let Some(event) = events.next().await {
            match event?.kind {
                Some(job_event::Kind::State(s)) => {
                    last = (s.state(), s.reason.clone());
                    bar.set_message(format!("{id}: {:?} {}", s.state(), s.reason));
                }
                Some(job_event::Kind::Metrics(m)) => {
                    bar.set_position(m.step);
                    watched.first_loss.get_or_insert(m.loss);
                    watched.last_loss = Some(m.loss);
                    if let Some(e) = m.eval_loss {
                        watched.last_eval = Some((m.step, e));
                    }
                    watched.bytes_saved += m.allreduce_bytes_saved;
                    watched.expert_rows.clone_from(&m.expert_rows);
                    let eval = watched
                        .last_eval
                        .map(|(step, e)| format!("  eval {e:.4} (step {step})"))
                        .unwrap_or_default();
                    let experts = match m.expert_rows.len() {
                        0 => String::new(),
                        n => format!(
                            "  experts used {}/{n} (busiest {} rows), sparse all-reduce saved {}",
                            m.expert_rows.iter().filter(|&&r| r > 0).count(),
                            m.expert_rows.iter().max().copied().unwrap_or(0),
                            human_bytes(m.allreduce_bytes_saved)
                        ),
                    };
                    let alltoall = match m.alltoall_bytes {
                        0 => String::new(),
                        b => format!(
                            "  all-to-all {}/step ({:.1} ms)",
                            human_bytes(b),
                            m.alltoall_ms
                        ),
                    };
                    if m.skipped && m.loss_scale == 0.0 {
                        bar.println(format!(
                            "step {}: loss or gradient not finite; update skipped",
                            m.step
                        ));
                    }
                    // fp16: the overflow itself arrives as a log line.
                    let scale = match m.loss_scale {
                        s if s > 0.0 => format!("  loss scale {s}"),
                        _ => String::new(),
                    };
                    bar.set_message(format!(
                        "loss {:.4}{eval}  {:.0} samples/s{experts}{alltoall}{scale}",
                        m.loss, m.samples_per_sec
                    ));
                }
                Some(job_event::Kind::Log(line)) => bar.println(line),
                None => {}
            }
        }
        bar.finish();
        Ok((last.0, last.1, watched.clone()))
    })?;
    match state {
        JobState::Succeeded => {
            println!("{id} succeeded");
            Ok(watched)
        }
        other => bail!("{id} ended {other:?}: {reason}"),
    }
}

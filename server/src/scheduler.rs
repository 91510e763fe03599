//! The scheduling decision: strict FIFO gang scheduling, as a pure
//! function over the queue and the workers.
//!
//! [`schedule`] walks the queue oldest first. A job starts only when
//! `workers` idle live workers that can run it exist (its device kind, and
//! enough memory for its estimate where a worker reports its memory); it
//! then takes the first of them in registration order, rank 0 first. The
//! first job that cannot start blocks every later one, even a smaller job
//! that would fit: no job jumps the queue, and no job ever holds a partial
//! gang. Each waiting job gets a reason: "waiting for N workers (have M)"
//! when fewer than N capable workers are registered at all, "waiting for N
//! idle workers (have M)" when they exist but are busy, "queued behind
//! JOB" for those behind a blocked job.

/// A queued job, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: String,
    /// Gang size.
    pub workers: usize,
    /// Device kind ("cpu" or "gpu").
    pub device: String,
    /// Bytes one worker needs ([`adjoint_proto::v1::Estimate::total_bytes`]).
    pub bytes: u64,
}

/// A live worker, as the scheduler sees it; the slice passed to
/// [`schedule`] is in registration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    pub id: String,
    pub idle: bool,
    /// Device kinds it can run, with the memory it has for each (0:
    /// unknown, assumed to fit).
    pub devices: Vec<(String, u64)>,
}

impl WorkerSlot {
    /// Whether this worker can run one rank of `job`.
    pub fn can_run(&self, job: &QueuedJob) -> bool {
        self.devices
            .iter()
            .any(|(kind, memory)| *kind == job.device && (*memory == 0 || *memory >= job.bytes))
    }
}

/// A job to start: its workers in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub job: String,
    pub workers: Vec<String>,
}

/// What to do now: the jobs to start, and why each other job waits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub starts: Vec<Start>,
    /// (job id, reason), in queue order.
    pub waiting: Vec<(String, String)>,
}

/// Decides which queued jobs start on which workers; see the module docs.
/// `queue` is oldest first; `workers` holds the live workers in
/// registration order.
pub fn schedule(queue: &[QueuedJob], workers: &[WorkerSlot]) -> Decision {
    let mut taken = vec![false; workers.len()];
    let mut decision = Decision::default();
    let mut blocked_by: Option<&str> = None;
    for job in queue {
        let capable: Vec<usize> = (0..workers.len())
            .filter(|&w| workers[w].can_run(job))
            .collect();
        if capable.len() < job.workers {
            let reason = format!(
                "waiting for {} workers (have {})",
                job.workers,
                capable.len()
            );
            decision.waiting.push((job.id.clone(), reason));
            blocked_by.get_or_insert(&job.id);
            continue;
        }
        if let Some(blocker) = blocked_by {
            decision
                .waiting
                .push((job.id.clone(), format!("queued behind {blocker}")));
            continue;
        }
        let free: Vec<usize> = capable
            .into_iter()
            .filter(|&w| workers[w].idle && !taken[w])
            .collect();
        if free.len() < job.workers {
            let reason = format!(
                "waiting for {} idle workers (have {})",
                job.workers,
                free.len()
            );
            decision.waiting.push((job.id.clone(), reason));
            blocked_by = Some(&job.id);
            continue;
        }
        let gang: Vec<usize> = free.into_iter().take(job.workers).collect();
        for &w in &gang {
            taken[w] = true;
        }
        decision.starts.push(Start {
            job: job.id.clone(),
            workers: gang.iter().map(|&w| workers[w].id.clone()).collect(),
        });
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, workers: usize) -> QueuedJob {
        QueuedJob {
            id: id.into(),
            workers,
            device: "cpu".into(),
            bytes: 100,
        }
    }

    fn worker(id: &str, idle: bool) -> WorkerSlot {
        WorkerSlot {
            id: id.into(),
            idle,
            devices: vec![("cpu".into(), 1000)],
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_jobs_on_three_workers_run_one_after_the_other() {
        let queue = [job("a", 2), job("b", 2)];
        let mut workers = vec![worker("w1", true), worker("w2", true), worker("w3", true)];
        let d = schedule(&queue, &workers);
        assert_eq!(
            d.starts,
            [Start {
                job: "a".into(),
                workers: ids(&["w1", "w2"])
            }]
        );
        assert_eq!(
            d.waiting,
            [(
                "b".to_owned(),
                "waiting for 2 idle workers (have 1)".to_owned()
            )]
        );

        // While a runs, b never starts on the one idle worker plus a
        // partial gang.
        workers[0].idle = false;
        workers[1].idle = false;
        let d = schedule(&queue[1..], &workers);
        assert!(d.starts.is_empty());

        // a finished: b takes the first two idle workers in order.
        workers[0].idle = true;
        workers[1].idle = true;
        let d = schedule(&queue[1..], &workers);
        assert_eq!(d.starts[0].workers, ids(&["w1", "w2"]));
    }

    #[test]
    fn a_smaller_later_job_does_not_jump_a_waiting_one() {
        let queue = [job("big", 3), job("small", 1)];
        let workers = [worker("w1", true), worker("w2", true), worker("w3", false)];
        let d = schedule(&queue, &workers);
        assert!(d.starts.is_empty());
        assert_eq!(d.waiting[0].1, "waiting for 3 idle workers (have 2)");
        assert_eq!(d.waiting[1].1, "queued behind big");
    }

    #[test]
    fn too_few_capable_workers_say_how_many_exist() {
        let queue = [job("a", 4)];
        let mut gpu = worker("g", true);
        gpu.devices = vec![("gpu".into(), 1000)];
        let small = WorkerSlot {
            devices: vec![("cpu".into(), 10)],
            ..worker("s", true)
        };
        let d = schedule(&queue, &[worker("w1", true), gpu, small]);
        assert_eq!(
            d.waiting,
            [("a".to_owned(), "waiting for 4 workers (have 1)".to_owned())]
        );
    }

    #[test]
    fn several_jobs_start_at_once_when_all_fit() {
        let queue = [job("a", 1), job("b", 2), job("c", 1)];
        let workers = [
            worker("w1", true),
            worker("w2", false),
            worker("w3", true),
            worker("w4", true),
        ];
        let d = schedule(&queue, &workers);
        let starts: Vec<_> = d
            .starts
            .iter()
            .map(|s| (s.job.as_str(), s.workers.clone()))
            .collect();
        assert_eq!(starts, [("a", ids(&["w1"])), ("b", ids(&["w3", "w4"]))]);
        assert_eq!(d.waiting[0].0, "c");
    }
}

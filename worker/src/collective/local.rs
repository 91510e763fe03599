//! In-process collectives: `n` ranks as threads, one channel per ordered
//! pair of ranks.
//!
//! Every operation sends each peer what it needs first (channels never
//! block) and then receives from every peer in rank order, checking the
//! operation, sequence number and length each message carries. Sums are
//! taken in rank order `0, 1, …, n − 1` on every rank, so results are
//! deterministic and bit-identical across ranks (the order differs from the
//! ring's; exact sums, such as of small integers, agree with it). A rank
//! whose [`LocalCollective`] is dropped disconnects its channels: peers
//! waiting on it fail at once with `PeerLost`. A rank that fails tells every
//! peer (an abort message), so they fail at once with the same cause.
//!
//! Meant for tests: each call copies the buffers it sends.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{
    Cause, CauseKind, Collective, Op, Result, block_range, check_all_to_all, check_owned,
    check_root, chunk_range,
};

/// Builds groups of [`LocalCollective`]s.
#[derive(Debug, Clone, Copy)]
pub struct LocalGroup;

impl LocalGroup {
    /// `n` connected ranks with the default 60 s timeout; give each to its
    /// own thread.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(n: usize) -> Vec<LocalCollective> {
        LocalGroup::with_timeout(n, Duration::from_secs(60))
    }

    /// `n` connected ranks that wait at most `timeout` for a peer.
    pub fn with_timeout(n: usize, timeout: Duration) -> Vec<LocalCollective> {
        let mut tx: Vec<Vec<Option<Sender<Msg>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut rx: Vec<Vec<Option<Receiver<Msg>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    let (s, r) = mpsc::channel();
                    tx[from][to] = Some(s);
                    rx[to][from] = Some(r);
                }
            }
        }
        tx.into_iter()
            .zip(rx)
            .enumerate()
            .map(|(rank, (tx, rx))| LocalCollective {
                rank,
                world: n,
                seq: 0,
                timeout,
                tx,
                rx,
                failed: None,
            })
            .collect()
    }
}

#[derive(Debug)]
struct Msg {
    op: Op,
    seq: u64,
    /// Length of the sender's buffer.
    total: usize,
    payload: Payload,
}

#[derive(Debug)]
enum Payload {
    F32(Vec<f32>),
    Bytes(Vec<u8>),
    /// The sender failed with this cause.
    Abort(Cause),
}

/// One rank of an in-process group.
#[derive(Debug)]
pub struct LocalCollective {
    rank: usize,
    world: usize,
    seq: u64,
    timeout: Duration,
    /// `tx[p]`: to rank `p` (`None` for this rank).
    tx: Vec<Option<Sender<Msg>>>,
    /// `rx[p]`: from rank `p`.
    rx: Vec<Option<Receiver<Msg>>>,
    failed: Option<Cause>,
}

impl LocalCollective {
    fn begin(&mut self) -> Result<u64> {
        self.seq += 1;
        match &self.failed {
            Some(cause) => Err(cause.error(self.rank)),
            None => Ok(self.seq),
        }
    }

    /// Records the first failure and tells every peer, so that they fail
    /// at once too instead of waiting for this rank.
    fn fail(&mut self, cause: Cause) -> super::CollectiveError {
        if self.failed.is_none() {
            for tx in self.tx.iter().flatten() {
                let _ = tx.send(Msg {
                    op: cause.op,
                    seq: cause.seq,
                    total: 0,
                    payload: Payload::Abort(cause.clone()),
                });
            }
        }
        self.failed.get_or_insert(cause).error(self.rank)
    }

    fn send(&mut self, to: usize, op: Op, total: usize, payload: Payload) -> Result<()> {
        let msg = Msg {
            op,
            seq: self.seq,
            total,
            payload,
        };
        let sent = self.tx[to].as_ref().expect("a peer").send(msg);
        if sent.is_err() {
            let cause = Cause::new(
                CauseKind::Lost,
                to,
                self.rank,
                op,
                self.seq,
                format!("rank {to} dropped its collective"),
            );
            return Err(self.fail(cause));
        }
        Ok(())
    }

    /// Receives `from`'s message for this call, checking that it is the same
    /// call over a buffer of `total` elements.
    fn recv(&mut self, from: usize, op: Op, total: Option<usize>) -> Result<Payload> {
        let (rank, seq) = (self.rank, self.seq);
        let got = self.rx[from]
            .as_ref()
            .expect("a peer")
            .recv_timeout(self.timeout);
        let msg = match got {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                return Err(self.fail(Cause::timeout(from, rank, op, seq, self.timeout)));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let detail = format!("rank {from} dropped its collective");
                return Err(self.fail(Cause::new(CauseKind::Lost, from, rank, op, seq, detail)));
            }
        };
        if let Payload::Abort(cause) = msg.payload {
            return Err(self.fail(cause));
        }
        let detail = if msg.op != op || msg.seq != seq {
            format!(
                "rank {from} is at {} #{}, this rank at {op} #{seq}",
                msg.op, msg.seq
            )
        } else if let Some(total) = total.filter(|&t| t != msg.total) {
            format!("rank {from} has {} elements, this rank {total}", msg.total)
        } else {
            return Ok(msg.payload);
        };
        Err(self.fail(Cause::new(CauseKind::Mismatch, from, rank, op, seq, detail)))
    }

    fn recv_f32(
        &mut self,
        from: usize,
        op: Op,
        total: Option<usize>,
        len: usize,
    ) -> Result<Vec<f32>> {
        match self.recv(from, op, total)? {
            Payload::F32(v) if v.len() == len => Ok(v),
            Payload::F32(v) => {
                let detail = format!(
                    "rank {from} sent {} elements, this rank expects {len}",
                    v.len()
                );
                let cause = Cause::new(CauseKind::Mismatch, from, self.rank, op, self.seq, detail);
                Err(self.fail(cause))
            }
            Payload::Bytes(_) | Payload::Abort(_) => unreachable!("op and sequence number checked"),
        }
    }

    fn peers(&self) -> impl Iterator<Item = usize> + use<> {
        let rank = self.rank;
        (0..self.world).filter(move |&p| p != rank)
    }

    /// Sums chunk `rank` of every rank's `data` into `data`, in rank order.
    fn reduce_chunk(&mut self, op: Op, data: &mut [f32]) -> Result<Range<usize>> {
        let (len, world) = (data.len(), self.world);
        for p in self.peers() {
            let chunk = data[chunk_range(len, world, p)].to_vec();
            self.send(p, op, len, Payload::F32(chunk))?;
        }
        let mine = chunk_range(len, world, self.rank);
        let mut parts = Vec::with_capacity(world);
        for p in 0..world {
            parts.push(if p == self.rank {
                data[mine.clone()].to_vec()
            } else {
                self.recv_f32(p, op, Some(len), mine.len())?
            });
        }
        for (i, x) in data[mine.clone()].iter_mut().enumerate() {
            *x = parts[1..]
                .iter()
                .fold(parts[0][i], |acc, part| acc + part[i]);
        }
        Ok(mine)
    }

    /// Sends chunk `rank` to every rank and stores theirs.
    fn gather_chunks(&mut self, op: Op, data: &mut [f32]) -> Result<()> {
        let (len, world) = (data.len(), self.world);
        let mine = chunk_range(len, world, self.rank);
        for p in self.peers() {
            self.send(p, op, len, Payload::F32(data[mine.clone()].to_vec()))?;
        }
        for p in self.peers() {
            let chunk = chunk_range(len, world, p);
            let part = self.recv_f32(p, op, Some(len), chunk.len())?;
            data[chunk].copy_from_slice(&part);
        }
        Ok(())
    }
}

impl Collective for LocalCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> Result<()> {
        self.begin()?;
        self.reduce_chunk(Op::AllReduceSum, data)?;
        self.gather_chunks(Op::AllReduceSum, data)
    }

    fn reduce_scatter_sum(&mut self, data: &mut [f32]) -> Result<Range<usize>> {
        self.begin()?;
        self.reduce_chunk(Op::ReduceScatterSum, data)
    }

    fn all_gather(&mut self, data: &mut [f32], owned: Range<usize>) -> Result<()> {
        check_owned(self.rank, self.world, data.len(), &owned)?;
        self.begin()?;
        self.gather_chunks(Op::AllGather, data)
    }

    fn broadcast(&mut self, data: &mut [u8], root: usize) -> Result<()> {
        check_root(self.rank, self.world, root)?;
        self.begin()?;
        let len = data.len();
        if self.rank == root {
            for p in self.peers() {
                self.send(p, Op::Broadcast, len, Payload::Bytes(data.to_vec()))?;
            }
            return Ok(());
        }
        match self.recv(root, Op::Broadcast, Some(len))? {
            Payload::Bytes(b) => data.copy_from_slice(&b),
            Payload::F32(_) | Payload::Abort(_) => unreachable!("op and sequence number checked"),
        }
        Ok(())
    }

    fn all_to_all(
        &mut self,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<()> {
        let rank = self.rank;
        check_all_to_all(rank, self.world, send, send_counts, recv, recv_counts)?;
        self.begin()?;
        for p in self.peers() {
            let block = send[block_range(send_counts, p)].to_vec();
            self.send(p, Op::AllToAll, send.len(), Payload::F32(block))?;
        }
        recv[block_range(recv_counts, rank)].copy_from_slice(&send[block_range(send_counts, rank)]);
        for p in self.peers() {
            let block = self.recv_f32(p, Op::AllToAll, None, recv_counts[p])?;
            recv[block_range(recv_counts, p)].copy_from_slice(&block);
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.begin()?;
        for p in self.peers() {
            self.send(p, Op::Barrier, 0, Payload::Bytes(Vec::new()))?;
        }
        for p in self.peers() {
            self.recv(p, Op::Barrier, Some(0))?;
        }
        Ok(())
    }
}

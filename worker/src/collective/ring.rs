//! The TCP ring: collectives between processes (or threads) over one
//! connection to each ring neighbour.
//!
//! [`RingCollective::connect`] joins rank `r` into the ring (see
//! `rendezvous`); every operation then runs as a pipelined pass over the
//! ring (see `link`):
//!
//! - **all-reduce** = reduce-scatter + all-gather, `2 (world - 1)` steps,
//!   each moving one chunk ([`chunk_range`]) per rank: bandwidth-optimal,
//!   every rank sends and receives `2 (world - 1) / world` of the buffer.
//!   Reduce-scatter step `s` sends chunk `r - 1 - s` and adds the received
//!   chunk `r - 2 - s` into the local one, so after `world - 1` steps rank
//!   `r` holds chunk `r` summed in the fixed order `r + 1, r + 2, ..., r`;
//!   all-gather step `t` forwards chunk `r - t`. The owner's sum is copied
//!   to every rank, so results are bit-identical everywhere.
//! - **broadcast**: a pipelined chain `root → root + 1 → … → root − 1`.
//! - **all-to-all**: blocks travel around the ring, each rank keeping its own
//!   and forwarding the rest (`world − 1` steps; traffic grows with the
//!   distance between ranks, so this suits small exchanges). Each block
//!   travels as one frame, not cut into segments.
//! - **barrier**: a token pass of `world − 1` steps; a rank leaves once
//!   every other rank's entry has reached it.
//!
//! Chunks are cut into segments of [`RingOptions::segment_bytes`]; while
//! the caller's thread reduces segment `i` and writes the next segment to
//! `next` (straight from the caller's buffer), a receiver thread reads the
//! following segments from `prev`. A world of one is a no-op.
//!
//! Memory per rank: [`RingOptions::inflight`] receive buffers of one
//! segment (2 MiB by default), kept for the ring's life; nothing is
//! allocated per call after the first calls.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use super::link::{Data, Link, Step};
use super::rendezvous::rendezvous;
use super::{
    Collective, CollectiveError, Op, Result, block_range, check_all_to_all, check_owned,
    check_root, chunk_range,
};

/// How a ring behaves.
#[derive(Debug, Clone)]
pub struct RingOptions {
    /// How long a collective waits for a peer to make progress (a segment
    /// to arrive, a write to be taken) before failing with `Timeout`; twice
    /// that for a peer that has already sent part of the call, so the rank
    /// next to one that never arrived is the one that reports it.
    pub timeout: Duration,
    /// How long the rendezvous retries before giving up.
    pub connect_timeout: Duration,
    /// Pipelining unit: bytes per message.
    pub segment_bytes: usize,
    /// Receive buffers (segments); also the most segments a rank writes
    /// ahead of those it has received.
    pub inflight: usize,
    /// The job's token: ranks with different tokens reject each other.
    pub token: String,
    /// Set by someone else to stop a rendezvous still waiting for peers
    /// (the job was aborted): it then fails at once instead of at
    /// `connect_timeout`.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for RingOptions {
    fn default() -> Self {
        RingOptions {
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
            segment_bytes: 1 << 20,
            inflight: 2,
            token: String::new(),
            cancel: None,
        }
    }
}

/// One rank of a TCP ring.
#[derive(Debug)]
pub struct RingCollective {
    rank: usize,
    world: usize,
    seq: u64,
    /// `None` for a world of one.
    link: Option<Link>,
}

impl RingCollective {
    /// Joins the ring as `rank` of `world`: `listener` is this rank's own
    /// (already bound) and `peers[p]` is the address rank `p` listens on.
    /// Connects to rank `rank + 1`, accepts rank `rank - 1`, both retried
    /// until `opts.connect_timeout`.
    pub fn connect(
        rank: usize,
        world: usize,
        listener: TcpListener,
        peers: &[SocketAddr],
        opts: RingOptions,
    ) -> Result<RingCollective> {
        if world == 0 || rank >= world || peers.len() != world {
            return Err(CollectiveError::Rendezvous {
                rank,
                peer: rank,
                addr: String::new(),
                detail: format!("rank {rank} of {world} with {} peer addresses", peers.len()),
            });
        }
        let link = if world == 1 {
            None
        } else {
            let links = rendezvous(rank, world, listener, peers, &opts)?;
            Some(Link::new(rank, world, links, &opts)?)
        };
        Ok(RingCollective {
            rank,
            world,
            seq: 0,
            link,
        })
    }

    /// A whole ring of `world` ranks in this process, over loopback TCP
    /// (each rank connected from its own thread): for tests and benchmarks.
    pub fn loopback(world: usize, opts: RingOptions) -> Result<Vec<RingCollective>> {
        let io = |source| CollectiveError::Io {
            rank: 0,
            context: "binding a loopback listener".into(),
            source,
        };
        let listeners = (0..world)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io))
            .collect::<Result<Vec<_>>>()?;
        let peers = listeners
            .iter()
            .map(|l| l.local_addr().map_err(io))
            .collect::<Result<Vec<_>>>()?;
        thread::scope(|s| {
            let handles: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(rank, l)| {
                    let (peers, opts) = (&peers, opts.clone());
                    s.spawn(move || RingCollective::connect(rank, world, l, peers, opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rendezvous thread panicked"))
                .collect()
        })
    }

    /// Counts the call and fails it at once if the group already failed.
    fn begin(&mut self, op: Op) -> Result<Option<(&mut Link, u64)>> {
        self.seq += 1;
        let seq = self.seq;
        match self.link.as_mut() {
            None => Ok(None),
            Some(link) => {
                link.begin(op, seq)?;
                Ok(Some((link, seq)))
            }
        }
    }

    /// Ring steps `steps` of an all-reduce over `data` (reduce-scatter is
    /// steps `0..world - 1`, all-gather `world - 1..2 (world - 1)`).
    fn ring(&mut self, op: Op, data: &mut [f32], steps: Range<usize>) -> Result<()> {
        let (rank, world, len) = (self.rank, self.world, data.len());
        let Some((link, seq)) = self.begin(op)? else {
            return Ok(());
        };
        let first = steps.start;
        let data = match op {
            Op::AllReduceSumBf16 => Data::Bf16(data),
            _ => Data::F32(data),
        };
        link.pass(op, seq, data, steps, |s| {
            ring_step(rank, world, len, s, first)
        })
    }
}

/// Step `s` of a ring all-reduce at `rank` (see the module doc).
fn ring_step(rank: usize, world: usize, len: usize, s: usize, first: usize) -> Step {
    let n = world;
    let (send, recv, add) = if s < n - 1 {
        ((rank + 2 * n - 1 - s) % n, (rank + 2 * n - 2 - s) % n, true)
    } else {
        let t = s - (n - 1);
        ((rank + n - t) % n, (rank + 2 * n - 1 - t) % n, false)
    };
    Step {
        send: Some(chunk_range(len, n, send)),
        recv: Some(chunk_range(len, n, recv)),
        add,
        after: (s > first).then(|| s - 1),
    }
}

impl RingCollective {
    /// Bytes this rank has written to the socket of its successor (frames
    /// and headers) since it joined: what the network really carried.
    pub fn bytes_sent(&self) -> u64 {
        self.link.as_ref().map_or(0, Link::bytes_sent)
    }
}

impl Collective for RingCollective {
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
        let steps = 0..2 * (self.world - 1);
        self.ring(Op::AllReduceSum, data, steps)
    }

    fn all_reduce_sum_bf16(&mut self, data: &mut [f32]) -> Result<()> {
        super::wire::round_bf16(data);
        let steps = 0..2 * (self.world - 1);
        self.ring(Op::AllReduceSumBf16, data, steps)
    }

    fn reduce_scatter_sum(&mut self, data: &mut [f32]) -> Result<Range<usize>> {
        let steps = 0..self.world - 1;
        self.ring(Op::ReduceScatterSum, data, steps)?;
        Ok(chunk_range(data.len(), self.world, self.rank))
    }

    fn all_gather(&mut self, data: &mut [f32], owned: Range<usize>) -> Result<()> {
        check_owned(self.rank, self.world, data.len(), &owned)?;
        let steps = self.world - 1..2 * (self.world - 1);
        self.ring(Op::AllGather, data, steps)
    }

    fn broadcast(&mut self, data: &mut [u8], root: usize) -> Result<()> {
        check_root(self.rank, self.world, root)?;
        let (rank, world, len) = (self.rank, self.world, data.len());
        let Some((link, seq)) = self.begin(Op::Broadcast)? else {
            return Ok(());
        };
        let is_root = rank == root;
        let forwards = (rank + 1) % world != root;
        let step = Step {
            send: (is_root || forwards).then_some(0..len),
            recv: (!is_root).then_some(0..len),
            add: false,
            after: (!is_root).then_some(0),
        };
        link.pass(Op::Broadcast, seq, Data::U8(data), 0..1, |_| step.clone())
    }

    fn all_to_all(
        &mut self,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<()> {
        let (rank, world) = (self.rank, self.world);
        check_all_to_all(rank, world, send, send_counts, recv, recv_counts)?;
        recv[block_range(recv_counts, rank)].copy_from_slice(&send[block_range(send_counts, rank)]);
        let Some((link, seq)) = self.begin(Op::AllToAll)? else {
            return Ok(());
        };
        link.all_to_all(seq, send, send_counts, recv, recv_counts)
    }

    fn barrier(&mut self) -> Result<()> {
        let steps = self.world - 1..2 * (self.world - 1);
        self.ring(Op::Barrier, &mut [], steps)
    }
}

//! One rank's two ring connections and the machinery around them.
//!
//! Threads: the caller's thread writes frames to `next` straight from the
//! caller's buffer (no copy on the way out) and does all the arithmetic; a
//! **receiver** thread reads frames from `prev` into a small pool of
//! buffers and hands them over, so receiving segment `i + 1` overlaps
//! writing and reducing segment `i`; a **watcher** thread reads the
//! otherwise idle reverse direction of `next`, where neighbours announce
//! failures, so a lost peer is noticed at once even when this rank is not
//! writing to it.
//!
//! Buffers: at most `inflight` receive buffers of one segment each, kept
//! across calls (all-to-all's staging area likewise keeps its capacity):
//! nothing is allocated per call once the first calls have run.
//!
//! Deadlock freedom: the caller's thread never has more than `inflight`
//! frames written beyond those it has taken from the receiver (when it
//! still expects frames in this call). A rank blocked writing to `next` then
//! means `next`'s pool is full of frames it has not taken, so `next` is
//! itself blocked writing with `inflight` frames of lead; around the ring
//! that would need more frames received than written, which cannot be.
//!
//! Failure handling lives in `shared`.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::rendezvous::Links;
use super::ring::RingOptions;
use super::shared::{
    CONTROL_WRITE, Free, Item, Shared, is_timeout, lock, receive_loop, watch_loop,
};
use super::wire::{self, HEADER, Header};
use super::{Cause, CauseKind, CollectiveError, Op, Result, block_range};

/// What the engine's data is: `f32` elements, bf16 values held in `f32`s
/// (sent as bf16, sums rounded to bf16), or bytes.
pub(super) enum Data<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [f32]),
    U8(&'a mut [u8]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::F32(d) | Data::Bf16(d) => d.len(),
            Data::U8(d) => d.len(),
        }
    }

    fn elem(&self) -> usize {
        match self {
            Data::F32(_) => 4,
            Data::Bf16(_) => 2,
            Data::U8(_) => 1,
        }
    }

    /// Elements `r` as wire bytes: the data itself on little-endian
    /// machines, else converted into `scratch`.
    fn bytes<'s>(&'s self, r: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        match self {
            Data::F32(d) => f32_bytes(&d[r], scratch),
            Data::Bf16(d) => {
                scratch.resize(r.len() * 2, 0);
                wire::put_bf16(scratch, &d[r]);
                scratch
            }
            Data::U8(d) => &d[r],
        }
    }

    fn store(&mut self, r: Range<usize>, src: &[u8]) {
        match self {
            Data::F32(d) => wire::get_f32(&mut d[r], src),
            Data::Bf16(d) => wire::get_bf16(&mut d[r], src),
            Data::U8(d) => d[r].copy_from_slice(src),
        }
    }

    fn add(&mut self, r: Range<usize>, src: &[u8]) {
        match self {
            Data::F32(d) => wire::add_f32(&mut d[r], src),
            Data::Bf16(d) => wire::add_bf16(&mut d[r], src),
            Data::U8(_) => unreachable!("byte buffers are never reduced"),
        }
    }
}

/// `f32`s as little-endian bytes, without a copy where that is the memory
/// layout.
fn f32_bytes<'s>(x: &'s [f32], scratch: &'s mut Vec<u8>) -> &'s [u8] {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(x);
    }
    scratch.resize(x.len() * 4, 0);
    wire::put_f32(scratch, x);
    scratch
}

/// One step of a pipelined pass: this rank sends `send` to `next` and
/// receives `recv` from `prev` (element ranges of the data), segment by
/// segment.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub send: Option<Range<usize>>,
    pub recv: Option<Range<usize>>,
    /// Add what is received instead of storing it.
    pub add: bool,
    /// Segment `i` of `send` goes only after segment `i` of this step's
    /// `recv` has arrived.
    pub after: Option<usize>,
}

/// Progress of one call: frames written and frames taken.
#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    written: usize,
    taken: usize,
}

/// A rank's connections, threads and buffers.
pub(super) struct Link {
    shared: Arc<Shared>,
    next: TcpStream,
    prev: TcpStream,
    items: Receiver<Item>,
    free: SyncSender<Free>,
    /// Most frames written beyond those taken.
    lead: usize,
    seg_bytes: usize,
    /// `prev` has sent a frame of the current call.
    arrived: bool,
    /// A call has begun and not yet returned successfully.
    in_call: bool,
    /// Conversion space on big-endian machines.
    scratch: Vec<u8>,
    /// All-to-all: blocks received for other ranks, and where they are.
    stage: Vec<u8>,
    staged: Vec<Staged>,
    threads: Vec<JoinHandle<()>>,
    /// Bytes written to `next` (frames and their headers).
    sent: u64,
}

#[derive(Debug, Clone, Copy)]
struct Staged {
    src: usize,
    dst: usize,
    at: usize,
    len: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("prev", &self.shared.prev)
            .field("next", &self.shared.next)
            .field("lead", &self.lead)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(rank: usize, world: usize, links: Links, opts: &RingOptions) -> Result<Link> {
        let io = |context: &'static str| {
            move |source| CollectiveError::Io {
                rank,
                context: context.to_string(),
                source,
            }
        };
        let Links { next, prev } = links;
        let timeout = opts.timeout.max(Duration::from_millis(1));
        prev.set_read_timeout(None).map_err(io("prev socket"))?;
        prev.set_write_timeout(Some(CONTROL_WRITE))
            .map_err(io("prev socket"))?;
        next.set_write_timeout(Some(timeout))
            .map_err(io("next socket"))?;
        next.set_read_timeout(None).map_err(io("next socket"))?;
        let lead = opts.inflight.max(1);
        let (items_tx, items) = mpsc::sync_channel(lead + 4);
        let (free, free_rx) = mpsc::sync_channel(lead + 4);
        let shared = Arc::new(Shared {
            rank,
            prev: (rank + world - 1) % world,
            next: (rank + 1) % world,
            timeout,
            op: AtomicU8::new(0),
            seq: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            cause: Mutex::new(None),
            settled: Condvar::new(),
            watcher_done: AtomicBool::new(false),
            next_closed: AtomicBool::new(false),
            prev_closed: AtomicBool::new(false),
            back: Mutex::new(prev.try_clone().map_err(io("prev socket"))?),
            items: items_tx,
            free: free.clone(),
        });
        let from_prev = prev.try_clone().map_err(io("prev socket"))?;
        let from_next = next.try_clone().map_err(io("next socket"))?;
        let sh = shared.clone();
        let receiver = thread::Builder::new()
            .name(format!("ring{rank}-recv"))
            .spawn(move || receive_loop(from_prev, free_rx, lead, &sh))
            .map_err(io("spawning the receiver"))?;
        let sh = shared.clone();
        let watcher = thread::Builder::new()
            .name(format!("ring{rank}-watch"))
            .spawn(move || watch_loop(from_next, &sh))
            .map_err(io("spawning the watcher"))?;
        Ok(Link {
            shared,
            next,
            prev,
            items,
            free,
            lead,
            seg_bytes: opts.segment_bytes.max(64),
            arrived: false,
            in_call: false,
            scratch: Vec::new(),
            stage: Vec::new(),
            staged: Vec::new(),
            threads: vec![receiver, watcher],
            sent: 0,
        })
    }

    /// Starts call `seq`: fails at once if the group already failed or a
    /// neighbour has left.
    pub fn begin(&mut self, op: Op, seq: u64) -> Result<()> {
        let sh = &self.shared;
        sh.op.store(op.code(), Ordering::Relaxed);
        sh.seq.store(seq, Ordering::SeqCst);
        self.arrived = false;
        self.in_call = true;
        if let Some(cause) = sh.cause() {
            return Err(cause.error(sh.rank));
        }
        for (peer, closed) in [(sh.next, &sh.next_closed), (sh.prev, &sh.prev_closed)] {
            if closed.load(Ordering::SeqCst) {
                let cause = sh.broken(peer, &io::ErrorKind::NotConnected.into(), closed);
                return Err(self.fail(cause));
            }
        }
        Ok(())
    }

    /// Records `cause` (unless another came first) and returns the error for
    /// the recorded one.
    fn fail(&self, cause: Cause) -> CollectiveError {
        self.shared.abort(cause);
        self.shared
            .cause()
            .expect("recorded above")
            .error(self.shared.rank)
    }

    fn check(&self) -> Result<()> {
        match self.shared.cause() {
            Some(cause) => Err(cause.error(self.shared.rank)),
            None => Ok(()),
        }
    }

    /// Writes one frame to `next`.
    /// Bytes this rank has written to its successor so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn write_frame(&mut self, header: &Header, payload: &[u8]) -> Result<()> {
        let mut head = [0u8; HEADER];
        header.encode(&mut head);
        let mut slices = [IoSlice::new(&head), IoSlice::new(payload)];
        let mut rest = &mut slices[..];
        let mut left = HEADER + payload.len();
        while left > 0 {
            let e = match self.next.write_vectored(rest) {
                Ok(0) => io::ErrorKind::WriteZero.into(),
                Ok(n) => {
                    left -= n;
                    self.sent += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            let sh = &self.shared;
            let cause = if is_timeout(&e) {
                sh.timed_out(sh.next)
            } else {
                // The break may be the echo of a failure `next` announced
                // backwards just before closing: let the watcher read it.
                sh.settle();
                sh.broken(sh.next, &e, &sh.next_closed)
            };
            return Err(self.fail(cause));
        }
        Ok(())
    }

    /// The next frame from `prev`, waiting if `wait`. If `prev` has already
    /// taken part in this call, a timeout is given once more before
    /// failing: a rank that never arrived is then reported by its own
    /// successor, which times out first, rather than by a rank further on.
    fn take(&mut self, wait: bool) -> Result<Option<(Header, Vec<u8>)>> {
        let mut patience = self.arrived;
        loop {
            let item = if wait {
                match self.items.recv_timeout(self.shared.timeout) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) if patience => {
                        patience = false;
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(self.fail(self.shared.timed_out(self.shared.prev)));
                    }
                    Err(RecvTimeoutError::Disconnected) => Item::Wake,
                }
            } else {
                match self.items.try_recv() {
                    Ok(item) => item,
                    Err(TryRecvError::Empty) => return Ok(None),
                    Err(TryRecvError::Disconnected) => Item::Wake,
                }
            };
            return match item {
                Item::Frame(h, buf) => Ok(Some((h, buf))),
                Item::Closed(cause) => Err(self.fail(cause)),
                Item::Wake => {
                    self.check()?;
                    Err(self.fail(self.shared.seen(
                        CauseKind::Lost,
                        self.shared.prev,
                        "receiver thread ended",
                    )))
                }
            };
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let _ = self.free.try_send(Free::Buf(buf));
    }

    /// Fails with a mismatch unless `h` is the expected data frame.
    fn expect(
        &mut self,
        h: &Header,
        op: Op,
        seq: u64,
        total: Option<usize>,
        step: usize,
        seg: usize,
    ) -> Result<()> {
        let prev = self.shared.prev;
        let detail = if h.op != op.code() || h.seq != seq {
            format!(
                "rank {prev} is at {} #{}, this rank at {op} #{seq}",
                h.op_name(),
                h.seq
            )
        } else if total.is_some_and(|t| h.total != t as u64) {
            format!(
                "rank {prev} has {} elements, this rank {}",
                h.total,
                total.unwrap_or(0)
            )
        } else if h.step as usize != step || h.seg as usize != seg {
            format!(
                "rank {prev} sent step {} segment {}, this rank expects step {step} segment {seg}",
                h.step, h.seg
            )
        } else {
            self.arrived = true;
            return Ok(());
        };
        Err(self.fail(self.shared.seen(CauseKind::Mismatch, prev, detail)))
    }

    /// Runs steps `steps` of a pipelined pass over `data`, `step(s)` saying
    /// what each step sends and receives.
    pub fn pass(
        &mut self,
        op: Op,
        seq: u64,
        mut data: Data<'_>,
        steps: Range<usize>,
        step: impl Fn(usize) -> Step,
    ) -> Result<()> {
        let total = data.len();
        let elem = data.elem();
        let seg_elems = (self.seg_bytes / elem).max(1);
        let segs = |r: &Range<usize>| r.len().div_ceil(seg_elems).max(1);
        let seg = |r: &Range<usize>, i: usize| {
            let start = r.start + i * seg_elems;
            start..(start + seg_elems).min(r.end)
        };
        let first_with = |from: usize, send: bool| {
            (from..steps.end)
                .find(|&s| {
                    if send {
                        step(s).send.is_some()
                    } else {
                        step(s).recv.is_some()
                    }
                })
                .unwrap_or(steps.end)
        };
        let (mut ss, mut si) = (first_with(steps.start, true), 0);
        let (mut rs, mut ri) = (first_with(steps.start, false), 0);
        let mut flow = Flow::default();
        while ss < steps.end || rs < steps.end {
            let receiving = rs < steps.end;
            let can_send = ss < steps.end
                && step(ss)
                    .after
                    .is_none_or(|d| rs > d || (rs == d && ri > si))
                && (!receiving || flow.written.saturating_sub(flow.taken) < self.lead);
            if can_send {
                let range = step(ss).send.expect("a step with a send");
                let part = seg(&range, si);
                let header = Header::data(op, seq, total, ss, si, part.len() * elem);
                let mut scratch = std::mem::take(&mut self.scratch);
                let sent = self.write_frame(&header, data.bytes(part, &mut scratch));
                self.scratch = scratch;
                sent?;
                flow.written += 1;
                si += 1;
                if si == segs(&range) {
                    (ss, si) = (first_with(ss + 1, true), 0);
                }
                // Take what has arrived meanwhile before writing more.
                if !receiving {
                    continue;
                }
            }
            let Some((h, buf)) = self.take(!can_send)? else {
                continue;
            };
            let st = step(rs);
            let range = st.recv.expect("a step with a receive");
            let part = seg(&range, ri);
            let bytes = part.len() * elem;
            self.expect(&h, op, seq, Some(total), rs, ri)?;
            if h.len != bytes as u64 {
                let detail = format!("segment of {} bytes, expected {bytes}", h.len);
                return Err(self.fail(self.shared.seen(
                    CauseKind::Mismatch,
                    self.shared.prev,
                    detail,
                )));
            }
            if st.add {
                data.add(part, &buf[..bytes]);
            } else {
                data.store(part, &buf[..bytes]);
            }
            self.give_back(buf);
            flow.taken += 1;
            ri += 1;
            if ri == segs(&range) {
                (rs, ri) = (first_with(rs + 1, false), 0);
            }
        }
        self.in_call = false;
        Ok(())
    }

    /// All-to-all around the ring: at step 1 this rank sends its block for
    /// every other rank to `next`, in ring order; at each later step it
    /// keeps the first block received and forwards the rest.
    pub fn all_to_all(
        &mut self,
        seq: u64,
        send: &[f32],
        send_counts: &[usize],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<()> {
        let (rank, world) = (self.shared.rank, send_counts.len());
        let frames = |k: usize| world - k;
        self.stage.clear();
        self.staged.clear();
        let mut forwarded = 0;
        let (mut sk, mut sf) = (1, 0);
        let (mut rk, mut rf) = (1, 0);
        let mut flow = Flow::default();
        while sk < world || rk < world {
            let receiving = rk < world;
            let can_send = sk < world
                && (sk == 1 || forwarded < self.staged.len())
                && (!receiving || flow.written.saturating_sub(flow.taken) < self.lead);
            if can_send {
                let mut h = Header::data(Op::AllToAll, seq, 0, sk, 0, 0);
                let mut scratch = std::mem::take(&mut self.scratch);
                let stage = std::mem::take(&mut self.stage);
                let payload = if sk == 1 {
                    let dst = (rank + 1 + sf) % world;
                    (h.seg, h.peer) = (rank as u32, dst as u32);
                    f32_bytes(&send[block_range(send_counts, dst)], &mut scratch)
                } else {
                    let s = self.staged[forwarded];
                    forwarded += 1;
                    (h.seg, h.peer) = (s.src as u32, s.dst as u32);
                    &stage[s.at..s.at + s.len]
                };
                h.len = payload.len() as u64;
                let sent = self.write_frame(&h, payload);
                (self.scratch, self.stage) = (scratch, stage);
                sent?;
                flow.written += 1;
                sf += 1;
                if sf == frames(sk) {
                    (sk, sf) = (sk + 1, 0);
                }
                if !receiving {
                    continue;
                }
            }
            let Some((h, buf)) = self.take(!can_send)? else {
                continue;
            };
            let kept = self.a2a_receive(seq, rk, rf, &h, &buf, recv, recv_counts);
            self.give_back(buf);
            kept?;
            flow.taken += 1;
            rf += 1;
            if rf == frames(rk) {
                (rk, rf) = (rk + 1, 0);
            }
        }
        self.in_call = false;
        Ok(())
    }

    /// Frame `f` of all-to-all step `k`: the block of rank `rank - k` for
    /// rank `rank + f`, kept (`f == 0`) or staged to be forwarded.
    #[allow(clippy::too_many_arguments)]
    fn a2a_receive(
        &mut self,
        seq: u64,
        k: usize,
        f: usize,
        h: &Header,
        buf: &[u8],
        recv: &mut [f32],
        recv_counts: &[usize],
    ) -> Result<()> {
        let (rank, world) = (self.shared.rank, recv_counts.len());
        let (src, dst) = ((rank + world - k) % world, (rank + f) % world);
        self.expect(h, Op::AllToAll, seq, None, k, src)?;
        let len = h.len as usize;
        if h.peer as usize != dst || (f == 0 && len != recv_counts[src] * 4) {
            let detail = if h.peer as usize != dst {
                format!(
                    "block for rank {} arrived where the one for rank {dst} belongs",
                    h.peer
                )
            } else {
                format!(
                    "rank {src} sends {} elements, this rank expects {}",
                    len / 4,
                    recv_counts[src]
                )
            };
            return Err(self.fail(
                self.shared
                    .seen(CauseKind::Mismatch, self.shared.prev, detail),
            ));
        }
        if f == 0 {
            wire::get_f32(&mut recv[block_range(recv_counts, src)], &buf[..len]);
        } else {
            let at = self.stage.len();
            self.stage.extend_from_slice(&buf[..len]);
            self.staged.push(Staged { src, dst, at, len });
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let sh = self.shared.clone();
        if self.in_call {
            // Dropped in the middle of a call (a panic): the others cannot
            // finish it.
            let detail = format!("rank {} dropped its collective during a call", sh.rank);
            sh.abort(sh.seen(CauseKind::Lost, sh.rank, detail));
        }
        if !sh.aborted.load(Ordering::SeqCst) {
            let (op, seq) = sh.current();
            let detail = format!("rank {} closed its collective", sh.rank);
            let frame = wire::abort_frame(&Cause::new(
                CauseKind::Closed,
                sh.rank,
                sh.rank,
                op,
                seq,
                detail,
            ));
            let _ = lock(&sh.back).write_all(&frame);
            let _ = self.next.set_write_timeout(Some(CONTROL_WRITE));
            let _ = self.next.write_all(&frame);
        }
        sh.closing.store(true, Ordering::SeqCst);
        let back = lock(&sh.back);
        let _ = self.next.shutdown(Shutdown::Both);
        let _ = self.prev.shutdown(Shutdown::Both);
        drop(back);
        let _ = self.free.try_send(Free::Wake);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

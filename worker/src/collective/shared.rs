//! What a rank's threads share, how a failure spreads, and the two
//! background threads: the **receiver** (frames from `prev`) and the
//! **watcher** (abort frames coming backwards from `next`).
//!
//! Failure: the first failure any thread sees is recorded once
//! ([`Shared::abort`]) and announced backwards to `prev` as an abort frame
//! (a write that never waits behind data, so it arrives before the
//! connection closes); each rank passes it on backwards, so it reaches
//! every rank. An aborted rank's receiver drains `prev`, so no rank stays
//! blocked writing to it. A connection that breaks is read as "that peer is
//! lost" at once when no abort frame came first on the reverse channel (a
//! dead process); when data reads or writes break, the rank first waits
//! briefly for an abort frame from the other side, since the break may be
//! the echo of a failure elsewhere. A rank that drops its collective
//! between calls sends a `Closed` frame both ways (dropped in the middle of
//! a call, it aborts instead): a neighbour's calls after the closer's last
//! one fail at once, while a call the closer finished can still finish.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::wire::{self, HEADER, Header, Kind, MAX_DETAIL};
use super::{Cause, CauseKind, Op};

/// Bound on writing an abort or close frame.
pub(super) const CONTROL_WRITE: Duration = Duration::from_secs(1);
/// How long a broken data connection waits for an abort frame explaining it.
const SETTLE: Duration = Duration::from_secs(1);
/// Largest frame the receiver accepts (a corrupt length is not allocated).
const MAX_FRAME: u64 = 1 << 36;

/// From the receiver to the caller's thread.
pub(super) enum Item {
    Frame(Header, Vec<u8>),
    /// `prev` closed its collective.
    Closed(Cause),
    /// An abort happened: look at the recorded cause.
    Wake,
}

/// From the caller's thread back to the receiver.
pub(super) enum Free {
    Buf(Vec<u8>),
    Wake,
}

/// State shared by the caller's thread, the receiver and the watcher.
pub(super) struct Shared {
    pub(super) rank: usize,
    pub(super) prev: usize,
    pub(super) next: usize,
    pub(super) timeout: Duration,
    /// The call in progress (or the last one): for causes found by threads.
    pub(super) op: AtomicU8,
    pub(super) seq: AtomicU64,
    pub(super) aborted: AtomicBool,
    /// Set at drop: ends of streams are then expected.
    pub(super) closing: AtomicBool,
    pub(super) cause: Mutex<Option<Cause>>,
    /// Signalled when a cause is recorded or the watcher ends.
    pub(super) settled: Condvar,
    pub(super) watcher_done: AtomicBool,
    /// `next` / `prev` left on purpose: the next call fails.
    pub(super) next_closed: AtomicBool,
    pub(super) prev_closed: AtomicBool,
    /// A clone of `prev`: abort frames go backwards on it.
    pub(super) back: Mutex<TcpStream>,
    pub(super) items: SyncSender<Item>,
    pub(super) free: SyncSender<Free>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Shared {
    pub(super) fn current(&self) -> (Op, u64) {
        let op = Op::from_code(self.op.load(Ordering::Relaxed)).unwrap_or(Op::Barrier);
        (op, self.seq.load(Ordering::SeqCst))
    }

    pub(super) fn cause(&self) -> Option<Cause> {
        lock(&self.cause).clone()
    }

    /// Records the first failure, tells `prev` and wakes the other threads;
    /// later failures are ignored.
    pub(super) fn abort(&self, cause: Cause) {
        // Holding `back` until the frame is out: whoever sees the cause and
        // then closes the connection (drop) waits for it.
        let mut back = lock(&self.back);
        {
            let mut slot = lock(&self.cause);
            if slot.is_some() {
                return;
            }
            *slot = Some(cause.clone());
            self.aborted.store(true, Ordering::SeqCst);
        }
        // Best effort: `prev` may be the one that is gone.
        let _ = back.write_all(&wire::abort_frame(&cause));
        drop(back);
        self.settled.notify_all();
        let _ = self.items.try_send(Item::Wake);
        let _ = self.free.try_send(Free::Wake);
    }

    /// Waits (briefly) for a cause to be recorded, or for the watcher to
    /// have read all `next` had to say.
    pub(super) fn settle(&self) {
        let cause = lock(&self.cause);
        let _ = self.settled.wait_timeout_while(cause, SETTLE, |c| {
            c.is_none() && !self.watcher_done.load(Ordering::SeqCst)
        });
    }

    /// A cause about `peer` seen by this rank during the current call.
    pub(super) fn seen(&self, kind: CauseKind, peer: usize, detail: impl Into<String>) -> Cause {
        let (op, seq) = self.current();
        Cause::new(kind, peer, self.rank, op, seq, detail)
    }

    pub(super) fn timed_out(&self, peer: usize) -> Cause {
        let (op, seq) = self.current();
        Cause::timeout(peer, self.rank, op, seq, self.timeout)
    }

    /// The cause for a broken connection to `peer`.
    pub(super) fn broken(&self, peer: usize, e: &io::Error, closed: &AtomicBool) -> Cause {
        if closed.load(Ordering::SeqCst) {
            return self.seen(
                CauseKind::Lost,
                peer,
                format!("rank {peer} closed its collective"),
            );
        }
        let detail = match e.kind() {
            io::ErrorKind::UnexpectedEof => "connection closed".to_string(),
            _ => e.to_string(),
        };
        self.seen(CauseKind::Lost, peer, detail)
    }
}

/// The receiver thread: reads frames from `prev` into pool buffers and
/// hands them to the caller's thread; after an abort it drains `prev`.
pub(super) fn receive_loop(mut prev: TcpStream, free: Receiver<Free>, pool: usize, sh: &Shared) {
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut made = 0;
    let mut head = [0u8; HEADER];
    loop {
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        if sh.aborted.load(Ordering::SeqCst) {
            drain(&mut prev);
            return;
        }
        let mut buf = match spare.pop() {
            Some(b) => b,
            None if made < pool => {
                made += 1;
                Vec::new()
            }
            None => match free.recv() {
                Ok(Free::Buf(b)) => b,
                Ok(Free::Wake) => continue,
                Err(_) => return,
            },
        };
        let read = prev
            .read_exact(&mut head)
            .map_err(|e| (e, true))
            .and_then(|()| {
                let h = Header::decode(&head).map_err(|e| (io::Error::other(e), false))?;
                if h.len > MAX_FRAME {
                    return Err((io::Error::other(format!("frame of {} bytes", h.len)), false));
                }
                let len = h.len as usize;
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                prev.read_exact(&mut buf[..len]).map_err(|e| (e, true))?;
                Ok(h)
            });
        let h = match read {
            Ok(h) => h,
            Err(_) if sh.closing.load(Ordering::SeqCst) || sh.aborted.load(Ordering::SeqCst) => {
                continue;
            }
            Err((e, true)) => {
                if sh.prev_closed.load(Ordering::SeqCst) {
                    return;
                }
                // Possibly the echo of an abort coming round the other way.
                sh.settle();
                sh.abort(sh.broken(sh.prev, &e, &sh.prev_closed));
                continue;
            }
            Err((e, false)) => {
                sh.abort(sh.seen(CauseKind::Mismatch, sh.prev, format!("protocol error: {e}")));
                continue;
            }
        };
        if h.kind == Kind::Data {
            if sh.items.send(Item::Frame(h, buf)).is_err() {
                return;
            }
            continue;
        }
        let len = (h.len as usize).min(MAX_DETAIL);
        match wire::abort_cause(&h, &buf[..len]) {
            Ok(c) if c.kind == CauseKind::Closed => {
                sh.prev_closed.store(true, Ordering::SeqCst);
                let _ = sh.items.try_send(Item::Closed(sh.broken(
                    sh.prev,
                    &io::ErrorKind::NotConnected.into(),
                    &sh.prev_closed,
                )));
            }
            Ok(c) => sh.abort(c),
            Err(e) => {
                sh.abort(sh.seen(CauseKind::Mismatch, sh.prev, format!("protocol error: {e}")))
            }
        }
        spare.push(buf);
    }
}

/// Reads and discards until the stream ends.
fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 1 << 16];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// The watcher thread: reads abort frames that `next` sends backwards; the
/// end of that stream without a `Closed` frame first means `next` is gone.
pub(super) fn watch_loop(next: TcpStream, sh: &Shared) {
    watch(next, sh);
    sh.watcher_done.store(true, Ordering::SeqCst);
    let _guard = lock(&sh.cause);
    sh.settled.notify_all();
}

fn watch(mut next: TcpStream, sh: &Shared) {
    let mut head = [0u8; HEADER];
    let mut detail = [0u8; MAX_DETAIL];
    loop {
        let read = next.read_exact(&mut head);
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = read {
            if !sh.next_closed.load(Ordering::SeqCst) {
                sh.abort(sh.broken(sh.next, &e, &sh.next_closed));
            }
            return;
        }
        let frame = Header::decode(&head).and_then(|h| {
            let len = (h.len as usize).min(MAX_DETAIL);
            if h.kind != Kind::Abort {
                return Err(format!(
                    "unexpected {:?} frame on the reverse channel",
                    h.kind
                ));
            }
            next.read_exact(&mut detail[..len])
                .map_err(|e| e.to_string())?;
            wire::abort_cause(&h, &detail[..len])
        });
        match frame {
            Ok(c) if c.kind == CauseKind::Closed => {
                // `next` finished call `c.seq` and left. A call of ours
                // after that one cannot complete: fail it now, so that the
                // news travels backwards round the ring at once. (A call up
                // to `c.seq` may still be finishing here.)
                sh.next_closed.store(true, Ordering::SeqCst);
                if sh.seq.load(Ordering::SeqCst) > c.seq {
                    sh.abort(sh.broken(
                        sh.next,
                        &io::ErrorKind::NotConnected.into(),
                        &sh.next_closed,
                    ));
                }
            }
            Ok(c) => sh.abort(c),
            Err(e) => {
                sh.abort(sh.seen(CauseKind::Mismatch, sh.next, format!("protocol error: {e}")));
                return;
            }
        }
    }
}

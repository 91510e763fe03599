//! Ring rendezvous: rank `r` connects to rank `(r + 1) % world` and accepts
//! a connection from rank `(r - 1) % world` on its own listener, retrying
//! with backoff until a deadline.
//!
//! The connecting side sends a hello (`ADJH`, protocol version, world, its
//! rank, the job token) without waiting; the accepting side checks it and
//! answers OK or a reason for rejecting. Connections with the wrong token,
//! world or rank are answered and dropped, and accepting goes on, so a
//! stray client cannot take a rank's place. Because every rank connects
//! before it accepts and reads its answer only after accepting, no rank
//! waits on another that is itself waiting.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::ring::RingOptions;
use super::{CollectiveError, Result};

const MAGIC: [u8; 4] = *b"ADJH";
const VERSION: u32 = 1;
const MAX_TEXT: usize = 4096;

/// The two connections of one rank.
#[derive(Debug)]
pub(super) struct Links {
    /// To rank `r + 1`: this rank sends data on it.
    pub next: TcpStream,
    /// From rank `r - 1`: this rank receives data on it.
    pub prev: TcpStream,
}

struct Ctx<'a> {
    rank: usize,
    world: usize,
    peers: &'a [SocketAddr],
    token: &'a str,
    deadline: Instant,
    cancel: Option<&'a AtomicBool>,
}

impl Ctx<'_> {
    fn fail(&self, peer: usize, detail: impl Into<String>) -> CollectiveError {
        CollectiveError::Rendezvous {
            rank: self.rank,
            peer,
            addr: self.peers[peer].to_string(),
            detail: detail.into(),
        }
    }

    /// Time left before the deadline, at least a millisecond (a zero socket
    /// timeout would mean "none").
    fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// Connects rank `rank` into the ring of `peers` (one address per rank).
pub(super) fn rendezvous(
    rank: usize,
    world: usize,
    listener: TcpListener,
    peers: &[SocketAddr],
    opts: &RingOptions,
) -> Result<Links> {
    let ctx = Ctx {
        rank,
        world,
        peers,
        token: &opts.token,
        deadline: Instant::now() + opts.connect_timeout,
        cancel: opts.cancel.as_deref(),
    };
    let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
    let mut next_stream = connect(&ctx, next)?;
    let hello = hello(&ctx);
    next_stream
        .write_all(&hello)
        .map_err(|e| ctx.fail(next, format!("sending hello: {e}")))?;
    let prev_stream = accept(&ctx, &listener, prev)?;
    wait_readable(&ctx, &next_stream, next)?;
    next_stream
        .set_read_timeout(Some(ctx.left()))
        .map_err(|e| ctx.fail(next, e.to_string()))?;
    read_answer(&mut next_stream).map_err(|e| ctx.fail(next, e))?;
    Ok(Links {
        next: next_stream,
        prev: prev_stream,
    })
}

/// Waits until `stream` has something to read (the peer's answer), in
/// short slices so that a cancel is seen; fails at the deadline.
fn wait_readable(ctx: &Ctx<'_>, stream: &TcpStream, peer: usize) -> Result<()> {
    let mut byte = [0u8; 1];
    loop {
        stream
            .set_read_timeout(Some(ctx.left().min(Duration::from_millis(100))))
            .map_err(|e| ctx.fail(peer, e.to_string()))?;
        match stream.peek(&mut byte) {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if ctx.cancelled() {
                    return Err(ctx.fail(peer, "cancelled while waiting for its answer"));
                }
                if ctx.expired() {
                    return Err(ctx.fail(peer, "no answer to the hello in time"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ctx.fail(peer, format!("waiting for its answer: {e}"))),
        }
    }
}

fn connect(ctx: &Ctx<'_>, peer: usize) -> Result<TcpStream> {
    let addr = ctx.peers[peer];
    let mut backoff = Duration::from_millis(2);
    loop {
        match TcpStream::connect_timeout(&addr, ctx.left().min(Duration::from_secs(2))) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| ctx.fail(peer, e.to_string()))?;
                return Ok(stream);
            }
            Err(e) if ctx.expired() => {
                return Err(ctx.fail(peer, format!("could not connect: {e}")));
            }
            Err(_) if ctx.cancelled() => {
                return Err(ctx.fail(peer, "cancelled while connecting"));
            }
            Err(_) => {
                thread::sleep(backoff.min(ctx.left()));
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }
}

fn accept(ctx: &Ctx<'_>, listener: &TcpListener, peer: usize) -> Result<TcpStream> {
    let io_err = |context: &str, source| CollectiveError::Io {
        rank: ctx.rank,
        context: context.to_string(),
        source,
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("listener", e))?;
    let mut rejected = String::from("nobody connected");
    let mut backoff = Duration::from_millis(1);
    loop {
        match listener.accept() {
            Ok((mut stream, from)) => match check_hello(ctx, &mut stream, peer) {
                Ok(()) => {
                    stream
                        .set_nodelay(true)
                        .map_err(|e| io_err("accepted stream", e))?;
                    return Ok(stream);
                }
                Err(reason) => {
                    // Best effort: the rejected side learns why.
                    let _ = stream.write_all(&answer(Some(&reason), ctx.rank));
                    rejected = format!("rejected {from}: {reason}");
                }
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ctx.cancelled() {
                    return Err(ctx.fail(peer, format!("cancelled while waiting ({rejected})")));
                }
                if ctx.expired() {
                    return Err(
                        ctx.fail(peer, format!("no connection accepted in time ({rejected})"))
                    );
                }
                thread::sleep(backoff.min(ctx.left()));
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("accepting", e)),
        }
    }
}

/// Reads and checks the hello on an accepted stream; answers OK if it is
/// from `peer` of this job.
fn check_hello(ctx: &Ctx<'_>, stream: &mut TcpStream, peer: usize) -> Result<(), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(ctx.left()))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 20];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("reading hello: {e}"))?;
    let field = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes")) as usize;
    if head[0..4] != MAGIC {
        return Err("not an adjoint ring hello".into());
    }
    let (version, world, rank, token_len) = (field(4), field(8), field(12), field(16));
    if version != VERSION as usize {
        return Err(format!("protocol version {version}, expected {VERSION}"));
    }
    if token_len > MAX_TEXT {
        return Err(format!("token of {token_len} bytes"));
    }
    let mut token = vec![0u8; token_len];
    stream
        .read_exact(&mut token)
        .map_err(|e| format!("reading hello: {e}"))?;
    if token != ctx.token.as_bytes() {
        return Err("wrong job token".into());
    }
    if world != ctx.world {
        return Err(format!("world {world}, expected {}", ctx.world));
    }
    if rank != peer {
        return Err(format!("rank {rank} connected, expected rank {peer}"));
    }
    stream
        .write_all(&answer(None, ctx.rank))
        .map_err(|e| format!("answering: {e}"))
}

fn hello(ctx: &Ctx<'_>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for field in [
        VERSION,
        ctx.world as u32,
        ctx.rank as u32,
        ctx.token.len() as u32,
    ] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(ctx.token.as_bytes());
    out
}

/// An answer: OK (`reject` is `None`) or the reason for rejecting.
fn answer(reject: Option<&str>, rank: usize) -> Vec<u8> {
    let reason = reject.unwrap_or("").as_bytes();
    let reason = &reason[..reason.len().min(MAX_TEXT)];
    let mut out = MAGIC.to_vec();
    out.push(u8::from(reject.is_some()));
    out.extend_from_slice(&(rank as u32).to_le_bytes());
    out.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    out.extend_from_slice(reason);
    out
}

fn read_answer(stream: &mut TcpStream) -> Result<(), String> {
    let mut head = [0u8; 13];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("waiting for the answer to the hello: {e}"))?;
    if head[0..4] != MAGIC {
        return Err("the peer is not an adjoint ring rank".into());
    }
    if head[4] == 0 {
        return Ok(());
    }
    let len = (u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as usize).min(MAX_TEXT);
    let mut reason = vec![0u8; len];
    stream
        .read_exact(&mut reason)
        .map_err(|e| format!("reading the rejection: {e}"))?;
    Err(format!("rejected: {}", String::from_utf8_lossy(&reason)))
}

//! [`NcclCollective`]: the [`Collective`] of GPU workers, over NCCL
//! (cudarc's `nccl` bindings, loaded at run time: a worker without
//! `libnccl` never calls into it; see [`NcclId::new`]).
//!
//! - **Rendezvous.** Rank 0 makes the unique id ([`NcclId::new`]); its
//!   worker sends the 128 bytes to the coordinator (`WorkerMessage.nccl_id`),
//!   which forwards them to the job's other ranks; every rank then calls
//!   [`NcclCollective::new`] (`ncclCommInitRank`) on the backend's
//!   communication stream. The init runs on a helper thread so that a rank
//!   that never joins fails it after the timeout instead of hanging.
//! - **Gradient buckets** stay on the device: the trainer's bucket hook
//!   orders the communication stream after the compute stream (an event),
//!   and [`Collective::all_reduce_sum_device`] enqueues `ncclAllReduce` on
//!   the bucket where it lies (f32, or `ncclBfloat16` for
//!   `grad_reduce = "bf16"`) and returns at once, so buckets reduce while
//!   backward runs; [`Collective::wait_device`] waits for them at the end
//!   of the step, with the failure handling below.
//! - **Host operations.** The rest of the trait works on host slices (the
//!   loss, sparse expert rows, state averaging), so each call stages the
//!   slice into a device buffer on the communication stream, runs the NCCL
//!   call there and copies the result back.
//!   `all_reduce_sum` is `ncclAllReduce` (sum, in place);
//!   `reduce_scatter_sum` is an all-reduce (our chunks are uneven, NCCL's
//!   are not; the other chunks then hold full sums, which the contract
//!   allows); `all_gather` is one `ncclBroadcast` per rank's chunk in one
//!   group; `broadcast` is `ncclBroadcast` of bytes; `all_to_all` is one
//!   group of `ncclSend`/`ncclRecv` per peer (expert parallelism), the
//!   rank's own block copied on the device; `barrier` all-reduces one float.
//! - **Failure.** After enqueueing, the caller's thread polls the stream
//!   (`cuStreamQuery`) and the communicator (`ncclCommGetAsyncError`). An
//!   asynchronous NCCL error (a peer's connection gone), the job's cancel
//!   flag (the coordinator's Abort after a lost worker, which names the
//!   rank), or the timeout aborts the communicator (`ncclCommAbort`) and
//!   fails the call; every later call fails the same way. NCCL does not
//!   say which peer stalled: with two ranks it is the other one; with more,
//!   the error names the next rank in NCCL's ring as the suspect.
//!
//! Only world size 1 can run on a one-GPU machine (NCCL refuses two ranks
//! on one device); more ranks are reviewed against cudarc's NCCL tests and
//! share their call sequence with the `ring` and `local` collectives.

use std::ffi::c_void;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use adjoint_kernels::cuda::probe::{Library, guard};
use cudarc::driver::{CudaStream, result as drv, sys as drv_sys};
use cudarc::nccl::{result as nccl, sys as nccl_sys};

use super::{
    Cause, CauseKind, Collective, CollectiveError, Op, Result, block_range, check_all_to_all,
    check_owned, check_root,
};

/// Bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;

/// An NCCL unique id: made by rank 0, carried to the others as bytes
/// (DEPENDENCIES.md pitfall 5).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclId([u8; ID_BYTES]);

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NcclId(..)")
    }
}

impl NcclId {
    /// A fresh id (`ncclGetUniqueId`, which also starts rank 0's bootstrap
    /// listener). Fails, never panics, when NCCL cannot be loaded.
    pub fn new() -> std::result::Result<NcclId, String> {
        Library::Nccl.require().map_err(|e| e.to_string())?;
        let id = guard("ncclGetUniqueId", nccl::get_uniqueid)
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("ncclGetUniqueId: {}", describe(&e)))?;
        Ok(NcclId(id.internal.map(|c| c as u8)))
    }

    /// The id rank 0 sent: exactly [`ID_BYTES`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<NcclId, String> {
        let arr: [u8; ID_BYTES] = bytes
            .try_into()
            .map_err(|_| format!("an NCCL id is {ID_BYTES} bytes, got {}", bytes.len()))?;
        Ok(NcclId(arr))
    }

    pub fn bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    fn raw(&self) -> nccl_sys::ncclUniqueId {
        nccl_sys::ncclUniqueId {
            internal: self.0.map(|b| b as ::core::ffi::c_char),
        }
    }
}

/// How an [`NcclCollective`] waits.
#[derive(Debug, Clone, Default)]
pub struct NcclOptions {
    /// How long one call (or the init) may take before the communicator is
    /// aborted.
    pub timeout: Duration,
    /// Set by the job's abort: the wait stops and the communicator is
    /// aborted.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// A communicator handle; NCCL communicators may be used from any thread,
/// one at a time.
struct Comm(nccl_sys::ncclComm_t);

// SAFETY: the handle is only used by the collective that owns it, from one
// thread at a time (`&mut self`), as NCCL allows.
unsafe impl Send for Comm {}

/// One rank of an NCCL group (see the module docs).
pub struct NcclCollective {
    comm: Option<Comm>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    seq: u64,
    opts: NcclOptions,
    /// Device staging buffer (grown, never shrunk) and its size in bytes.
    staging: u64,
    staging_bytes: usize,
    failed: Option<Cause>,
    /// The last device reduction enqueued and not yet waited for
    /// ([`Collective::wait_device`]).
    enqueued: Option<Op>,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("seq", &self.seq)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// An NCCL error code with NCCL's own words for it.
fn describe(e: &nccl::NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static C string for any code.
    let text = guard("ncclGetErrorString", || unsafe {
        let p = nccl_sys::ncclGetErrorString(e.0);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    })
    .unwrap_or_default();
    format!("{:?} ({text})", e.0)
}

impl NcclCollective {
    /// Joins the group `id` as `rank` of `world`, on `stream` (the
    /// backend's communication stream). Fails after `opts.timeout` when
    /// the other ranks do not all join, or at once when the cancel flag is
    /// set.
    pub fn new(
        stream: Arc<CudaStream>,
        rank: usize,
        world: usize,
        id: NcclId,
        opts: NcclOptions,
    ) -> Result<NcclCollective> {
        let rendezvous = |detail: String| CollectiveError::Rendezvous {
            rank,
            peer: 0,
            addr: "nccl".into(),
            detail,
        };
        if world == 0 || rank >= world {
            return Err(rendezvous(format!("rank {rank} of world {world}")));
        }
        Library::Nccl
            .require()
            .map_err(|e| rendezvous(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<std::result::Result<Comm, String>>();
        let ctx = stream.context().clone();
        let raw = id.raw();
        std::thread::Builder::new()
            .name(format!("nccl-init-{rank}"))
            .spawn(move || {
                let made = guard("ncclCommInitRank", || {
                    ctx.bind_to_thread()
                        .map_err(|e| format!("bind context: {e}"))?;
                    let mut comm = std::mem::MaybeUninit::uninit();
                    // SAFETY: `comm` is written by NCCL on success; the id
                    // is the 128 bytes rank 0 made; world and rank were
                    // checked above.
                    unsafe {
                        nccl::comm_init_rank(comm.as_mut_ptr(), world as i32, raw, rank as i32)
                            .map_err(|e| format!("ncclCommInitRank: {}", describe(&e)))?;
                        Ok(Comm(comm.assume_init()))
                    }
                })
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                if let Err(mpsc::SendError(Ok(late))) = tx.send(made) {
                    // The caller gave up waiting: free what came too late.
                    // SAFETY: `late` is a live communicator nobody else holds.
                    let _ = unsafe { nccl::comm_abort(late.0) };
                }
            })
            .map_err(|e| rendezvous(format!("thread: {e}")))?;
        let start = Instant::now();
        let comm = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(made) => break made.map_err(rendezvous)?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(rendezvous("the init thread died".into()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                return Err(rendezvous("cancelled".into()));
            }
            if start.elapsed() > opts.timeout {
                return Err(rendezvous(format!(
                    "not every one of the {world} ranks joined within {:?}",
                    opts.timeout
                )));
            }
        };
        Ok(NcclCollective {
            comm: Some(comm),
            stream,
            rank,
            world,
            seq: 0,
            opts,
            staging: 0,
            staging_bytes: 0,
            failed: None,
            enqueued: None,
        })
    }

    /// The rank a stalled call most likely waits for (see the module docs).
    fn suspect(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn io(&self, context: String, detail: String) -> CollectiveError {
        CollectiveError::Io {
            rank: self.rank,
            context,
            source: std::io::Error::other(detail),
        }
    }

    /// Starts call `op`: fails when the group already failed.
    fn begin(&mut self, op: Op) -> Result<nccl_sys::ncclComm_t> {
        self.seq += 1;
        if let Some(c) = &self.failed {
            return Err(c.error(self.rank));
        }
        let Some(comm) = &self.comm else {
            return Err(self.io(format!("nccl {op}"), "the communicator was aborted".into()));
        };
        let comm = comm.0;
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| self.io(format!("nccl {op}"), format!("bind context: {e}")))?;
        Ok(comm)
    }

    /// Aborts the communicator after `cause` (kept for every later call).
    fn fail(&mut self, cause: Cause) -> CollectiveError {
        if let Some(c) = self.comm.take() {
            // SAFETY: the handle is live and owned; abort also stops its
            // kernels still queued on the stream.
            let _ = guard("ncclCommAbort", || unsafe { nccl::comm_abort(c.0) });
        }
        let err = cause.error(self.rank);
        self.failed = Some(cause);
        err
    }

    /// A synchronous NCCL error of call `op`.
    fn nccl_failed(&mut self, op: Op, e: &nccl::NcclError) -> CollectiveError {
        let cause = Cause::new(
            CauseKind::Lost,
            self.suspect(),
            self.rank,
            op,
            self.seq,
            format!("NCCL: {}", describe(e)),
        );
        self.fail(cause)
    }

    /// Waits for the stream's queued work, polling the communicator's
    /// error, the cancel flag and the timeout (see the module docs).
    fn wait(&mut self, op: Op, comm: nccl_sys::ncclComm_t) -> Result<()> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            // SAFETY: the stream is live (held by `self.stream`).
            let q = unsafe { drv_sys::cuStreamQuery(self.stream.cu_stream()) };
            match q {
                drv_sys::CUresult::CUDA_SUCCESS => return Ok(()),
                drv_sys::CUresult::CUDA_ERROR_NOT_READY => {}
                other => {
                    let cause = Cause::new(
                        CauseKind::Lost,
                        self.rank,
                        self.rank,
                        op,
                        self.seq,
                        format!("CUDA: {other:?}"),
                    );
                    return Err(self.fail(cause));
                }
            }
            let mut async_err = nccl_sys::ncclResult_t::ncclSuccess;
            // SAFETY: `comm` is live; NCCL writes one result code.
            let _ = unsafe { nccl_sys::ncclCommGetAsyncError(comm, &mut async_err) };
            if !matches!(
                async_err,
                nccl_sys::ncclResult_t::ncclSuccess | nccl_sys::ncclResult_t::ncclInProgress
            ) {
                let e = nccl::NcclError(async_err);
                return Err(self.nccl_failed(op, &e));
            }
            if self
                .opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                let cause = Cause::new(
                    CauseKind::Closed,
                    self.suspect(),
                    self.rank,
                    op,
                    self.seq,
                    "the job was aborted",
                );
                return Err(self.fail(cause));
            }
            let waited = start.elapsed();
            if waited > self.opts.timeout {
                let cause = Cause::timeout(self.suspect(), self.rank, op, self.seq, waited);
                return Err(self.fail(cause));
            }
            spins += 1;
            if spins < 2000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Makes the staging buffer at least `bytes` long.
    fn stage(&mut self, op: Op, bytes: usize) -> Result<u64> {
        if bytes <= self.staging_bytes {
            return Ok(self.staging);
        }
        self.sync(op)?;
        if self.staging != 0 {
            // SAFETY: nothing is queued on the staging buffer any more.
            let _ = unsafe { drv::free_sync(self.staging) };
            self.staging = 0;
            self.staging_bytes = 0;
        }
        // SAFETY: the context is current (`begin`); the block is owned by
        // `self` and freed in `Drop` or when it grows again.
        let ptr = unsafe { drv::malloc_sync(bytes) }
            .map_err(|e| self.io(format!("nccl {op}"), format!("staging {bytes} bytes: {e}")))?;
        self.staging = ptr;
        self.staging_bytes = bytes;
        Ok(ptr)
    }

    fn sync(&mut self, op: Op) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.io(format!("nccl {op}"), e.to_string()))
    }

    fn htod<T>(&mut self, op: Op, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` holds at least `size_of_val(src)` bytes (staged);
        // the copy is ordered on the stream before the NCCL call.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| self.io(format!("nccl {op}"), format!("copy to the device: {e}")))
    }

    fn dtoh<T>(&mut self, op: Op, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: `src` holds `size_of_val(dst)` bytes; the stream is then
        // synchronised before `dst` is read.
        unsafe { drv::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| self.io(format!("nccl {op}"), format!("copy to the host: {e}")))?;
        self.sync(op)
    }

    fn stream_ptr(&self) -> nccl_sys::cudaStream_t {
        self.stream.cu_stream() as _
    }

    /// In-place sum all-reduce of `data` through the staging buffer.
    fn all_reduce_host(&mut self, op: Op, data: &mut [f32]) -> Result<()> {
        let comm = self.begin(op)?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.stage(op, std::mem::size_of_val(data))?;
        self.htod(op, buf, data)?;
        let f32s = nccl_sys::ncclDataType_t::ncclFloat32;
        // SAFETY: `buf` holds `data.len()` f32 on this device (staged), in
        // place.
        unsafe { self.enqueue_sum(op, comm, [buf, buf], data.len(), f32s) }?;
        self.wait(op, comm)?;
        self.dtoh(op, data, buf)
    }

    /// Enqueues `ncclAllReduce` (sum) of `len` elements of `ty` from
    /// `send` into `recv` on the stream, for call `op`.
    ///
    /// # Safety
    /// `send` and `recv` each hold `len` elements of `ty` on this
    /// communicator's device, equal (in place, which NCCL allows) or
    /// disjoint, untouched until the stream has run the call.
    unsafe fn enqueue_sum(
        &mut self,
        op: Op,
        comm: nccl_sys::ncclComm_t,
        [send, recv]: [u64; 2],
        len: usize,
        ty: nccl_sys::ncclDataType_t,
    ) -> Result<()> {
        // SAFETY: the caller's contract; the stream is the communicator's
        // device's.
        let r = unsafe {
            nccl::all_reduce(
                send as *const c_void,
                recv as *mut c_void,
                len,
                ty,
                nccl_sys::ncclRedOp_t::ncclSum,
                comm,
                self.stream_ptr(),
            )
        };
        r.map(|_| ()).map_err(|e| self.nccl_failed(op, &e))
    }

    /// Runs `calls` between `ncclGroupStart` and `ncclGroupEnd`.
    fn grouped(
        &mut self,
        op: Op,
        calls: impl FnOnce() -> std::result::Result<(), nccl::NcclError>,
    ) -> Result<()> {
        let r = nccl::group_start().and_then(|_| {
            let inner = calls();
            let end = nccl::group_end();
            inner.and(end.map(|_| ()))
        });
        r.map_err(|e| self.nccl_failed(op, &e))
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        let _ = self.stream.context().bind_to_thread();
        let _ = self.stream.synchronize();
        if let Some(c) = self.comm.take() {
            // SAFETY: every call of ours has completed (waited); abort frees
            // the communicator without waiting on peers that may be gone.
            let _ = guard("ncclCommAbort", || unsafe { nccl::comm_abort(c.0) });
        }
        if self.staging != 0 {
            // SAFETY: the stream is synchronised; the block is ours.
            let _ = unsafe { drv::free_sync(self.staging) };
        }
    }
}

impl Collective for NcclCollective {
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
        self.all_reduce_host(Op::AllReduceSum, data)
    }

    fn reduce_scatter_sum(&mut self, data: &mut [f32]) -> Result<Range<usize>> {
        self.all_reduce_host(Op::ReduceScatterSum, data)?;
        Ok(super::chunk_range(data.len(), self.world, self.rank))
    }

    fn all_gather(&mut self, data: &mut [f32], owned: Range<usize>) -> Result<()> {
        let op = Op::AllGather;
        check_owned(self.rank, self.world, data.len(), &owned)?;
        let comm = self.begin(op)?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.stage(op, std::mem::size_of_val(data))?;
        let mine = &data[owned.clone()];
        self.htod(op, buf + 4 * owned.start as u64, mine)?;
        let (world, len, stream) = (self.world, data.len(), self.stream_ptr());
        self.grouped(op, || {
            for r in 0..world {
                let chunk = super::chunk_range(len, world, r);
                if chunk.is_empty() {
                    continue;
                }
                let at = (buf + 4 * chunk.start as u64) as *mut c_void;
                // SAFETY: `at` holds the chunk's f32 inside the staging
                // buffer; root `r` sends it, the others receive in place.
                unsafe {
                    nccl::broadcast(
                        at,
                        at,
                        chunk.len(),
                        nccl_sys::ncclDataType_t::ncclFloat32,
                        r as i32,
                        comm,
                        stream,
                    )?;
                }
            }
            Ok(())
        })?;
        self.wait(op, comm)?;
        self.dtoh(op, data, buf)
    }

    fn broadcast(&mut self, data: &mut [u8], root: usize) -> Result<()> {
        let op = Op::Broadcast;
        check_root(self.rank, self.world, root)?;
        let comm = self.begin(op)?;
        if data.is_empty() {
            return Ok(());
        }
        let buf = self.stage(op, data.len())?;
        if self.rank == root {
            self.htod(op, buf, data)?;
        }
        // SAFETY: `buf` holds `data.len()` bytes on this device.
        let r = unsafe {
            nccl::broadcast(
                buf as *const c_void,
                buf as *mut c_void,
                data.len(),
                nccl_sys::ncclDataType_t::ncclUint8,
                root as i32,
                comm,
                self.stream_ptr(),
            )
        };
        if let Err(e) = r {
            return Err(self.nccl_failed(op, &e));
        }
        self.wait(op, comm)?;
        if self.rank != root {
            self.dtoh(op, data, buf)?;
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
        let op = Op::AllToAll;
        check_all_to_all(self.rank, self.world, send, send_counts, recv, recv_counts)?;
        let comm = self.begin(op)?;
        let total = std::mem::size_of_val(send) + std::mem::size_of_val(recv);
        if total == 0 {
            return Ok(());
        }
        let buf = self.stage(op, total)?;
        let recv_at = buf + std::mem::size_of_val(send) as u64;
        self.htod(op, buf, send)?;
        let (rank, world, stream) = (self.rank, self.world, self.stream_ptr());
        // This rank's own block moves on the device.
        let own_send = block_range(send_counts, rank);
        let own_recv = block_range(recv_counts, rank);
        if !own_send.is_empty() {
            // SAFETY: both ranges lie in the staging buffer and are disjoint
            // (send part, receive part).
            unsafe {
                drv::memcpy_dtod_async(
                    recv_at + 4 * own_recv.start as u64,
                    buf + 4 * own_send.start as u64,
                    4 * own_send.len(),
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| self.io(format!("nccl {op}"), format!("own block: {e}")))?;
        }
        self.grouped(op, || {
            for p in (0..world).filter(|&p| p != rank) {
                let s = block_range(send_counts, p);
                let r = block_range(recv_counts, p);
                // SAFETY: each block lies in its part of the staging
                // buffer; NCCL pairs this send/recv with peer `p`'s.
                unsafe {
                    if !s.is_empty() {
                        nccl::send(
                            (buf + 4 * s.start as u64) as *const c_void,
                            s.len(),
                            nccl_sys::ncclDataType_t::ncclFloat32,
                            p as i32,
                            comm,
                            stream,
                        )?;
                    }
                    if !r.is_empty() {
                        nccl::recv(
                            (recv_at + 4 * r.start as u64) as *mut c_void,
                            r.len(),
                            nccl_sys::ncclDataType_t::ncclFloat32,
                            p as i32,
                            comm,
                            stream,
                        )?;
                    }
                }
            }
            Ok(())
        })?;
        self.wait(op, comm)?;
        self.dtoh(op, recv, recv_at)
    }

    fn reduces_device_memory(&self) -> bool {
        true
    }

    unsafe fn all_reduce_sum_device(
        &mut self,
        send: u64,
        recv: u64,
        len: usize,
        bf16: bool,
    ) -> Result<()> {
        let (op, ty) = if bf16 {
            (Op::AllReduceSumBf16, nccl_sys::ncclDataType_t::ncclBfloat16)
        } else {
            (Op::AllReduceSum, nccl_sys::ncclDataType_t::ncclFloat32)
        };
        let comm = self.begin(op)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract is `enqueue_sum`'s.
        unsafe { self.enqueue_sum(op, comm, [send, recv], len, ty) }?;
        self.enqueued = Some(op);
        Ok(())
    }

    fn wait_device(&mut self) -> Result<()> {
        let Some(op) = self.enqueued.take() else {
            return Ok(());
        };
        if let Some(c) = &self.failed {
            return Err(c.error(self.rank));
        }
        let Some(comm) = self.comm.as_ref().map(|c| c.0) else {
            return Err(self.io(format!("nccl {op}"), "the communicator was aborted".into()));
        };
        self.wait(op, comm)
    }

    fn barrier(&mut self) -> Result<()> {
        let mut one = [0f32];
        self.all_reduce_host(Op::Barrier, &mut one)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_as_128_bytes() {
        let bytes: Vec<u8> = (0..128).map(|i| i as u8).collect();
        let id = NcclId::from_bytes(&bytes).unwrap();
        assert_eq!(id.bytes().as_slice(), bytes.as_slice());
        assert_eq!(id.raw().internal[5] as u8, 5);
        let err = NcclId::from_bytes(&bytes[..100]).unwrap_err();
        assert!(err.contains("128 bytes, got 100"), "{err}");
    }

    /// Without NCCL (this machine) making an id fails with a message, no
    /// panic; with it, an id comes back.
    #[test]
    fn an_id_without_nccl_is_an_error_not_a_panic() {
        match NcclId::new() {
            Ok(_) => eprintln!("NCCL is present: made an id"),
            Err(e) => {
                eprintln!("skipped making an NCCL id: {e}");
                assert!(e.contains("NCCL") || e.contains("nccl"), "{e}");
            }
        }
    }
}

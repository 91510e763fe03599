//! The CUDA backend's state: context, streams, cuBLAS handle, loaded
//! kernels, buffers, scratch and the device error word; memory and
//! ordering operations; checked views; the launch helper.
//!
//! Memory is plain `cuMemAlloc` blocks addressed by raw device pointers:
//! the worker allocates one arena per program plus its parameter, gradient
//! and optimizer buffers, and kernels get `base + offset` of checked views.
//! cudarc's per-slice event tracking is turned off before anything is
//! allocated: ordering between the compute and communication streams is
//! the caller's, through [`Backend::record_event`]/[`Backend::wait_event`].

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, result as drv};
use cudarc::nvrtc::Ptx;

use super::kernels::{Kernel, error_site};
use super::nvrtc;
use super::probe::{DeviceInfo, guard, probe};
use crate::backend::{ElemType, Error, Event, Result, Stream, View};

/// Threads per block of elementwise kernels.
pub(super) const BLOCK: u32 = 256;

/// Events kept for reuse; recording more outstanding events than this
/// reuses the oldest (a later wait then waits longer, never less).
const EVENT_POOL: usize = 64;

/// One device allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeviceBuffer {
    pub(super) ptr: u64,
    pub(super) bytes: usize,
}

/// The CUDA backend: one device, a compute and a communication stream.
pub struct CudaBackend {
    pub(super) info: DeviceInfo,
    pub(super) ctx: Arc<CudaContext>,
    pub(super) compute: Arc<CudaStream>,
    pub(super) comm: Arc<CudaStream>,
    pub(super) blas: CudaBlas,
    /// Indexed by `Kernel as usize`.
    funcs: Vec<CudaFunction>,
    pub(super) buffers: Vec<DeviceBuffer>,
    /// Three u64: error code, index, bound (see `common.cuh`).
    err: DeviceBuffer,
    /// Grown on demand, never shrunk (row statistics, partial sums).
    scratch: DeviceBuffer,
    events: Vec<CudaEvent>,
    next_event: u64,
    /// A failure of a call that cannot return one (record/wait), reported
    /// by the next `synchronize`.
    pending: Option<Error>,
    pub(super) sms: u32,
    /// f32 copies of half operands ([`crate::widen`]).
    half: crate::widen::HalfScratch,
}

// The worker moves backends between threads (one training loop each).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<CudaBackend>();
};

impl CudaBackend {
    /// [`crate::widen::widened`] over this backend's half scratch.
    pub(super) fn widened<const N: usize>(
        &mut self,
        what: &'static str,
        views: [View; N],
        written: [bool; N],
        f: impl FnOnce(&mut CudaBackend, [View; N]) -> Result<()>,
    ) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.half);
        let out = crate::widen::widened(self, &mut scratch, what, views, written, f);
        self.half = scratch;
        out
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.info)
            .field("buffers", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

/// A driver, cuBLAS or NVRTC failure as a backend error naming `what`.
pub(super) fn cuda_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cuda: {what}: {e}"))
}

/// Kernel argument pointers: each argument must be a named local that
/// outlives the launch (`args!(x, y, n)`).
macro_rules! args {
    ($($a:ident),* $(,)?) => {
        [$((&$a) as *const _ as *mut ::std::ffi::c_void),*]
    };
}
pub(super) use args;

type ModuleCache = Mutex<HashMap<(usize, u64), Arc<CudaModule>>>;

/// Modules loaded per (device, source hash): NVRTC and the module load run
/// once per device per process.
fn modules() -> &'static ModuleCache {
    static MODULES: OnceLock<ModuleCache> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

impl CudaBackend {
    /// Opens device `ordinal`: context, streams, cuBLAS (TF32 off), and
    /// every kernel compiled by NVRTC for its architecture. Without CUDA
    /// the error says "no CUDA device found" and why; never panics.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let devices = probe().map_err(|e| Error::Invalid(e.to_string()))?;
        let Some(info) = devices.into_iter().find(|d| d.ordinal == ordinal) else {
            return Err(Error::Invalid(format!(
                "no CUDA device found with ordinal {ordinal}"
            )));
        };
        guard("opening the CUDA backend", || CudaBackend::open(info))
            .map_err(|e| Error::Invalid(e.to_string()))?
    }

    fn open(info: DeviceInfo) -> Result<CudaBackend> {
        let ctx = CudaContext::new(info.ordinal).map_err(|e| cuda_err("context", e))?;
        // SAFETY: nothing is allocated yet; this backend orders its streams
        // itself and frees buffers only after synchronising both.
        unsafe { ctx.disable_event_tracking() };
        let compute = ctx.new_stream().map_err(|e| cuda_err("stream", e))?;
        let comm = ctx.new_stream().map_err(|e| cuda_err("stream", e))?;
        let blas = CudaBlas::new(compute.clone()).map_err(|e| cuda_err("cublas", e))?;
        let mut backend = CudaBackend {
            funcs: load_kernels(&ctx, &info)?,
            sms: ctx
                .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| cuda_err("device attribute", e))?
                .max(1) as u32,
            info,
            ctx,
            compute,
            comm,
            blas,
            buffers: Vec::new(),
            err: DeviceBuffer { ptr: 0, bytes: 0 },
            scratch: DeviceBuffer { ptr: 0, bytes: 0 },
            events: Vec::new(),
            next_event: 0,
            pending: None,
            half: crate::widen::HalfScratch::default(),
        };
        backend.set_tf32(false)?;
        backend.err = backend.raw_alloc(24)?;
        Ok(backend)
    }

    /// The device this backend runs on.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream kernels run on.
    pub fn compute_stream(&self) -> &Arc<CudaStream> {
        &self.compute
    }

    /// The stream collectives run on (NCCL).
    pub fn comm_stream(&self) -> &Arc<CudaStream> {
        &self.comm
    }

    /// Lets cuBLAS use TF32 tensor cores for f32 matmuls (off by default:
    /// results then match the CPU's to f32 rounding).
    pub fn set_tf32(&mut self, on: bool) -> Result<()> {
        use blas_sys::cublasMath_t::{CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH};
        let mode = if on {
            CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            CUBLAS_DEFAULT_MATH
        };
        self.bind()?;
        // SAFETY: the handle is live for `self`'s lifetime.
        unsafe { blas_sys::cublasSetMathMode(*self.blas.handle(), mode) }
            .result()
            .map_err(|e| cuda_err("cublasSetMathMode", e))
    }

    /// The device address of a view, for collectives: checked as a kernel
    /// argument of type `elem` would be.
    pub fn device_ptr(&self, v: View) -> Result<u64> {
        self.ptr("device_ptr", v, v.elem)
    }

    /// Makes this backend's context current on the calling thread.
    pub(super) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err("bind context", e))
    }

    /// A zeroed device block (no block for 0 bytes).
    pub(super) fn raw_alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        if bytes == 0 {
            return Ok(DeviceBuffer { ptr: 0, bytes: 0 });
        }
        self.bind()?;
        // SAFETY: the context is current; the block is owned by the caller
        // and freed in `Drop` (or when scratch grows) after synchronising.
        let ptr = unsafe { drv::malloc_sync(bytes) }.map_err(|_| Error::Alloc { bytes })?;
        // SAFETY: `ptr` is a fresh block of `bytes` bytes.
        unsafe { drv::memset_d8_async(ptr, 0, bytes, self.compute.cu_stream()) }
            .map_err(|e| cuda_err("memset", e))?;
        Ok(DeviceBuffer { ptr, bytes })
    }

    /// At least `bytes` of scratch, its device address. Growing it waits
    /// for the compute stream so no queued kernel still uses the old block.
    pub(super) fn scratch(&mut self, bytes: usize) -> Result<u64> {
        if self.scratch.bytes < bytes {
            self.sync_streams()?;
            let grown = self.raw_alloc(bytes.next_power_of_two())?;
            free(std::mem::replace(&mut self.scratch, grown));
        }
        Ok(self.scratch.ptr)
    }

    /// The address of the error word.
    pub(super) fn err_ptr(&self) -> u64 {
        self.err.ptr
    }

    /// Checks a view (buffer, element type, bounds, alignment) and returns
    /// its device address.
    pub(super) fn ptr(&self, what: &'static str, v: View, elem: ElemType) -> Result<u64> {
        if v.elem != elem {
            return Err(Error::ElemType {
                what,
                expected: elem,
                found: v.elem,
            });
        }
        let buf = self.buffers.get(v.buffer.0 as usize).copied();
        let buffer_len = buf.map_or(0, |b| b.bytes);
        let end = v.offset.checked_add(v.bytes());
        let Some(buf) = buf.filter(|_| end.is_some_and(|end| end <= buffer_len)) else {
            return Err(Error::OutOfBounds {
                what,
                buffer: v.buffer.0,
                offset: v.offset,
                len: v.bytes(),
                buffer_len,
            });
        };
        if !v.offset.is_multiple_of(elem.size()) {
            return Err(Error::Misaligned {
                what,
                offset: v.offset,
                align: elem.size(),
            });
        }
        Ok(buf.ptr + v.offset as u64)
    }

    /// A view read as its own element type.
    pub(super) fn any_ptr(&self, what: &'static str, v: View) -> Result<u64> {
        self.ptr(what, v, v.elem)
    }

    /// An index view (i64 or i32): its address and whether it is i64.
    pub(super) fn index_ptr(&self, what: &'static str, v: View) -> Result<(u64, i32)> {
        match v.elem {
            ElemType::I32 => Ok((self.ptr(what, v, ElemType::I32)?, 0)),
            _ => Ok((self.ptr(what, v, ElemType::I64)?, 1)),
        }
    }

    /// Blocks for a grid-stride launch over `n` elements.
    pub(super) fn grid(&self, n: u64) -> u32 {
        n.div_ceil(u64::from(BLOCK))
            .clamp(1, u64::from(self.sms) * 32) as u32
    }

    /// Launches `k` on the compute stream.
    ///
    /// # Safety
    /// `params` points at one value per kernel parameter, each of the
    /// parameter's exact type, alive for the call; every pointer argument
    /// is a device address the kernel may access for the extents its other
    /// arguments give (checked views of live buffers, outputs disjoint from
    /// inputs).
    pub(super) unsafe fn launch(
        &self,
        k: Kernel,
        grid: u32,
        block: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        self.bind()?;
        let f = &self.funcs[k as usize];
        // SAFETY: the caller's contract; `f` belongs to this context.
        unsafe {
            drv::launch_kernel(
                f.cu_function(),
                (grid, 1, 1),
                (block, 1, 1),
                0,
                self.compute.cu_stream(),
                params,
            )
        }
        .map_err(|e| cuda_err(k.name(), e))
    }

    pub(super) fn stream(&self, s: Stream) -> &Arc<CudaStream> {
        match s {
            Stream::Compute => &self.compute,
            Stream::Comm => &self.comm,
        }
    }

    pub(super) fn sync_streams(&self) -> Result<()> {
        self.bind()?;
        self.compute
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))?;
        self.comm
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))
    }

    /// Reads and clears the error word (after a synchronisation).
    pub(super) fn check_device_errors(&self) -> Result<()> {
        let mut word = [0u64; 3];
        // SAFETY: `err` is a live 24-byte block; the copy into `word`
        // completes before the call returns (pageable destination).
        unsafe { drv::memcpy_dtoh_async(&mut word, self.err.ptr, self.compute.cu_stream()) }
            .map_err(|e| cuda_err("read error word", e))?;
        self.compute
            .synchronize()
            .map_err(|e| cuda_err("synchronize", e))?;
        if word[0] == 0 {
            return Ok(());
        }
        // SAFETY: as above; 24 bytes of a live block.
        unsafe { drv::memset_d8_async(self.err.ptr, 0, 24, self.compute.cu_stream()) }
            .map_err(|e| cuda_err("clear error word", e))?;
        Err(Error::IndexOutOfRange {
            what: error_site(word[0]),
            index: word[1] as i64,
            bound: word[2] as usize,
        })
    }

    pub(super) fn take_pending(&mut self) -> Result<()> {
        self.pending.take().map_or(Ok(()), Err)
    }

    pub(super) fn record(&mut self, stream: Stream) -> Event {
        let id = self.next_event;
        self.next_event += 1;
        let slot = (id % EVENT_POOL as u64) as usize;
        if slot == self.events.len() {
            match self.ctx.new_event(None) {
                Ok(e) => self.events.push(e),
                Err(e) => {
                    self.pending = Some(cuda_err("create event", e));
                    return Event(id);
                }
            }
        }
        if let Err(e) = self.bind().and_then(|()| {
            self.events[slot]
                .record(self.stream(stream))
                .map_err(|e| cuda_err("record event", e))
        }) {
            self.pending = Some(e);
        }
        Event(id)
    }

    pub(super) fn wait(&mut self, stream: Stream, event: Event) {
        let slot = (event.0 % EVENT_POOL as u64) as usize;
        if event.0 >= self.next_event || slot >= self.events.len() {
            self.pending = Some(Error::Invalid(format!(
                "wait_event: event {} was never recorded",
                event.0
            )));
            return;
        }
        if let Err(e) = self.bind().and_then(|()| {
            self.stream(stream)
                .wait(&self.events[slot])
                .map_err(|e| cuda_err("wait event", e))
        }) {
            self.pending = Some(e);
        }
    }
}

fn free(b: DeviceBuffer) {
    if b.bytes > 0 {
        // SAFETY: `b` came from `malloc_sync` and every use of it finished
        // (the callers synchronise first); it is freed once.
        let _ = unsafe { drv::free_sync(b.ptr) };
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let _ = self.sync_streams();
        for b in self.buffers.drain(..) {
            free(b);
        }
        free(self.scratch);
        free(self.err);
    }
}

/// Every kernel of [`Kernel::ALL`], from the sources compiled for the
/// device's architecture (cached per process and device).
fn load_kernels(ctx: &Arc<CudaContext>, info: &DeviceInfo) -> Result<Vec<CudaFunction>> {
    let arch = info.arch();
    let mut by_file: HashMap<&'static str, Arc<CudaModule>> = HashMap::new();
    for (src, compiled) in
        nvrtc::compile_all(Some(&arch)).map_err(|e| Error::Invalid(e.to_string()))?
    {
        let key = (info.ordinal, compiled.hash);
        let mut cache = modules().lock().unwrap_or_else(|e| e.into_inner());
        let module = match cache.get(&key) {
            Some(m) => m.clone(),
            None => {
                let image = match &compiled.cubin {
                    Some(cubin) => Ptx::from_binary(cubin.clone()),
                    None => Ptx::from_src(compiled.ptx.clone()),
                };
                let m = ctx
                    .load_module(image)
                    .map_err(|e| cuda_err(&format!("loading {}.cu", src.name), e))?;
                cache.insert(key, m.clone());
                m
            }
        };
        by_file.insert(src.name, module);
    }
    Kernel::ALL
        .iter()
        .map(|k| {
            let module = by_file
                .get(k.file())
                .ok_or_else(|| Error::Invalid(format!("cuda: no module {}.cu", k.file())))?;
            module
                .load_function(k.name())
                .map_err(|e| cuda_err(&format!("kernel {}", k.name()), e))
        })
        .collect()
}

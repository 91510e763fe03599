//! Finding CUDA without panicking.
//!
//! cudarc loads every CUDA library at its first use and panics when the
//! library or one of its symbols is missing (DEPENDENCIES.md, pitfall 1).
//! So each library is first looked for with its `is_culib_present`, and
//! every first call into the driver runs inside [`guard`], which turns a
//! panic into [`NoCuda`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use cudarc::driver::{result as drv, sys as drv_sys};

/// A GPU the backend can run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The CUDA device ordinal (`cuda:N`).
    pub ordinal: usize,
    pub name: String,
    /// Device memory in bytes.
    pub total_memory: usize,
    /// (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
}

impl DeviceInfo {
    /// The NVRTC real architecture of the device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!("sm_{major}{minor}")
    }
}

/// Why CUDA cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCuda {
    #[error("no CUDA device found: {library} ({what}) cannot be loaded")]
    MissingLibrary {
        library: &'static str,
        what: &'static str,
    },
    #[error("no CUDA device found")]
    NoDevice,
    #[error("no CUDA device found: {0}")]
    Driver(String),
}

/// A CUDA library cudarc loads at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    Driver,
    Nvrtc,
    Cublas,
    Nccl,
}

impl Library {
    /// The file name stem, as in error messages.
    pub fn file(self) -> &'static str {
        match self {
            Library::Driver => "libcuda",
            Library::Nvrtc => "libnvrtc",
            Library::Cublas => "libcublas",
            Library::Nccl => "libnccl",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Library::Driver => "the CUDA driver",
            Library::Nvrtc => "the CUDA runtime compiler",
            Library::Cublas => "cuBLAS",
            Library::Nccl => "NCCL",
        }
    }

    /// Whether the library can be loaded (by any of the names cudarc
    /// tries; for NCCL that excludes `libnccl.so.2`, DEPENDENCIES.md
    /// pitfall 2).
    pub fn present(self) -> bool {
        // SAFETY: each call only tries to dlopen the named CUDA library
        // (running its initialisers, as any CUDA program does) and drops
        // the handle; nothing of it is called.
        let found = catch_unwind(|| unsafe {
            match self {
                Library::Driver => drv_sys::is_culib_present(),
                Library::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Library::Cublas => cudarc::cublas::sys::is_culib_present(),
                Library::Nccl => cudarc::nccl::sys::is_culib_present(),
            }
        });
        found.unwrap_or(false)
    }

    /// `Ok` when present, else the [`NoCuda`] naming it.
    pub fn require(self) -> Result<(), NoCuda> {
        if self.present() {
            Ok(())
        } else {
            Err(NoCuda::MissingLibrary {
                library: self.file(),
                what: self.what(),
            })
        }
    }
}

/// Runs `f`, turning a panic (cudarc's way of saying a library or symbol
/// is missing) into [`NoCuda::Driver`] naming `what`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, NoCuda> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        NoCuda::Driver(format!("{what}: {msg}"))
    })
}

/// The GPUs the CUDA backend can run on: the driver, NVRTC and cuBLAS must
/// load and at least one device must answer. Never panics.
pub fn probe() -> Result<Vec<DeviceInfo>, NoCuda> {
    Library::Driver.require()?;
    let count = guard("cuInit", || {
        drv::init()?;
        drv::device::get_count()
    })?;
    let count = match count {
        Ok(n) if n > 0 => n as usize,
        Ok(_) | Err(drv::DriverError(drv_sys::CUresult::CUDA_ERROR_NO_DEVICE)) => {
            return Err(NoCuda::NoDevice);
        }
        Err(e) => return Err(NoCuda::Driver(format!("cuInit: {e}"))),
    };
    Library::Nvrtc.require()?;
    Library::Cublas.require()?;
    (0..count)
        .map(|ordinal| {
            guard("device query", || device_info(ordinal))?
                .map_err(|e| NoCuda::Driver(format!("device {ordinal}: {e}")))
        })
        .collect()
}

fn device_info(ordinal: usize) -> Result<DeviceInfo, drv::DriverError> {
    use drv_sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
    };
    let dev = drv::device::get(ordinal as i32)?;
    // SAFETY: `dev` is a handle the driver just returned for this ordinal.
    let (total_memory, major, minor) = unsafe {
        (
            drv::device::total_mem(dev)?,
            drv::device::get_attribute(dev, MAJOR)?,
            drv::device::get_attribute(dev, MINOR)?,
        )
    };
    Ok(DeviceInfo {
        ordinal,
        name: drv::device::get_name(dev)?,
        total_memory,
        compute_capability: (major, minor),
    })
}

/// Whether NCCL loads (collectives need it; the backend does not).
pub fn nccl_available() -> bool {
    Library::Nccl.present()
}

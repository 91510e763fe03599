//! `widest!`: an expression compiled for the widest vectors the CPU has.

/// Evaluates `expr` (calls to `#[inline(always)]` code) compiled for the
/// widest vectors the CPU has: AVX-512, AVX2, or the baseline, chosen at
/// run time. The same bits in every build, since Rust neither contracts nor
/// reorders float arithmetic; only the vector width changes.
macro_rules! widest {
    ($e:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512<R>(g: impl FnOnce() -> R) -> R {
                g()
            }
            #[target_feature(enable = "avx2")]
            fn avx2<R>(g: impl FnOnce() -> R) -> R {
                g()
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the one feature `avx512` is built with.
                unsafe { avx512(|| $e) }
            } else if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the one feature `avx2` is built with.
                unsafe { avx2(|| $e) }
            } else {
                $e
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $e
        }
    }};
}

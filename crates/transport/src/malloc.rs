//! glibc's allocator tuned for relaying.
//!
//! Relaying allocates and frees 16–64 KiB buffers at a high rate (socket reads, TLS records,
//! HTTP/2 frames), so the heap's top grows and shrinks by a few MiB all the time. glibc hands
//! free memory at the top of its heap back to the kernel once it exceeds 128 KiB and then
//! faults it in again page by page: under bulk traffic the agent took ~70,000 page faults a
//! second and lost a fifth of its throughput to them (docs/bench.md). Keeping up to
//! [`TRIM_THRESHOLD`] free at the top stops that; the peak RSS is unchanged (memory is
//! retained after a peak, not added to it).

/// Free memory at the top of the heap that is kept rather than returned to the kernel.
pub const TRIM_THRESHOLD: usize = 16 << 20;
/// Allocations from this size up get their own mapping (returned at once when freed).
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// Applies [`TRIM_THRESHOLD`] and [`MMAP_THRESHOLD`] to this process's allocator. Call it
/// first thing in `main`. Returns whether the allocator accepted both (only glibc does; with
/// another C library this does nothing).
pub fn tune_for_relaying() -> bool {
    imp::tune()
}

/// Free memory at the top of a heap that the server keeps: enough for the relay buffers of
/// the tunnels that one worker thread carries at once, a fraction of [`TRIM_THRESHOLD`].
pub const SERVER_TRIM_THRESHOLD: usize = 4 << 20;

/// For the server: allocations from [`MMAP_THRESHOLD`] up always get their own mapping. A
/// password hash (argon2, 19 MiB) then returns its memory when it ends; with glibc's default
/// the threshold grows after the first such free, later hashes come from the arenas of the
/// blocking threads, and each arena keeps its 19 MiB (a login flood took the server past
/// 600 MiB). Up to [`SERVER_TRIM_THRESHOLD`] of free memory stays at the top of each heap:
/// with glibc's default (128 KiB) relaying took ~100,000 page faults a second at the server
/// (docs/bench.md). What is kept is per heap (at most eight per core), not per link: idle
/// links hold no more than before.
pub fn tune_for_server() -> bool {
    imp::tune_server()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub fn tune_server() -> bool {
        set(libc::M_MMAP_THRESHOLD, super::MMAP_THRESHOLD)
            & set(libc::M_TRIM_THRESHOLD, super::SERVER_TRIM_THRESHOLD)
    }

    #[allow(unsafe_code)]
    fn set(param: libc::c_int, value: usize) -> bool {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters; these two are documented
        // (mallopt(3)), take a byte count, and can be changed at any time. It returns 1 on
        // success, 0 on error.
        unsafe { libc::mallopt(param, value) == 1 }
    }

    pub fn tune() -> bool {
        // Setting either one fixes both (glibc stops adjusting them on its own), so set both.
        set(libc::M_MMAP_THRESHOLD, super::MMAP_THRESHOLD)
            & set(libc::M_TRIM_THRESHOLD, super::TRIM_THRESHOLD)
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn tune() -> bool {
        false
    }

    pub fn tune_server() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_accepts_the_thresholds() {
        // Both values are within what mallopt(3) accepts (the mmap threshold at most
        // 32 MiB on 64-bit), so on glibc both calls succeed.
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(super::tune_for_relaying());
            assert!(super::tune_for_server());
        }
    }
}

//! The process's memory footprint.
//!
//! glibc gives each thread that allocates under contention its own malloc arena (up to 8 per
//! core), and memory freed in an arena is rarely returned to the system. The sidecar's blocking
//! pool (store reads, file passes) and runtime workers allocate on up to ~20 threads, which
//! left a sidecar with 100,000 queued jobs at 70 MB resident where two arenas hold 46 MB with
//! no measurable cost in throughput (BENCHMARKS.md).

#![allow(unsafe_code)]

/// Arenas glibc may create.
const ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas; call first thing in `main`, before any thread starts. Whether
/// the cap was taken (an allocator other than glibc's ignores it).
pub fn limit_arenas() -> bool {
    // SAFETY: mallopt takes two integers; called before other threads exist, so no allocation
    // races with the change.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) == 1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_arena_cap() {
        assert!(super::limit_arenas());
    }
}

//! What the running kernel offers the programs, told to them at load time.
//!
//! The loader probes the kernel (one test program per helper) and writes the bits into
//! the read-only global [`GLOBAL`] before the programs are verified. The verifier sees
//! a read-only global as a constant and never walks the branch a kernel cannot run, so
//! one program carries the fast path for new kernels and a fallback for old ones, with
//! the same verdicts on both. A zero (what a loader that sets nothing leaves) selects
//! every fallback: correct everywhere, only slower.

/// The global's symbol in the eBPF object (a `u32` of the bits below).
pub const GLOBAL: &str = "PC_KERNEL";

/// `bpf_ktime_get_coarse_ns` (Linux 5.11+): the deny-event token bucket reads the last
/// tick instead of the precise clock. Without it, `bpf_ktime_get_ns`.
pub const COARSE_CLOCK: u32 = 1 << 0;

//! The kernel's features as the loader set them (`portcullis_common::kernel`): each
//! check is a constant to the verifier, which prunes the branch not taken.

use portcullis_common::kernel::COARSE_CLOCK;

/// Set by the loader (`EbpfLoader::set_global`) before verification; read-only to the
/// programs. Its name is `portcullis_common::kernel::GLOBAL`.
#[unsafe(no_mangle)]
static PC_KERNEL: u32 = 0;

/// Whether the loader found `feature` in the running kernel.
#[inline(always)]
fn has(feature: u32) -> bool {
    // SAFETY: a read of a read-only global; volatile so the compiler does not fold the
    // build-time zero into the code (the loader changes it before the load).
    unsafe { core::ptr::read_volatile(&PC_KERNEL) & feature != 0 }
}

/// A clock for rates: the coarse clock (the last tick, a few ns) where the kernel has
/// it, else the precise one (tens of ns).
#[inline(always)]
pub fn coarse_ns() -> u64 {
    if has(COARSE_CLOCK) {
        // SAFETY: a helper without arguments, present when the loader set the bit.
        unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: a helper without arguments.
        unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
    }
}

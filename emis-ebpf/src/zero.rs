//! Zeroing without `memset`. LLVM merges zero stores of 16 bytes or more into a
//! `memset` call, and for the BPF target that call is a function of its own that stores
//! one byte per loop turn: about five instructions a byte, plus the call. On the packet
//! path that was most of the time a denied packet took (47 to 94 ns), so the structures
//! it zeroes every packet go through [`zero`], whose volatile word stores LLVM keeps as
//! they are. The objects test (`emis-testkit/tests/objects.rs`) fails if a `memset` call
//! comes back into the programs.

use core::mem::{align_of, size_of};

/// Sets every byte of `*value` to zero with 8-byte stores.
#[inline(always)]
pub fn zero<T>(value: *mut T) {
    const {
        assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8);
    }
    let words = value.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // In bounds (the size is a multiple of 8) and aligned (the type is).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

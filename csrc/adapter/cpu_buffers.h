// Reusable CPU output buffers for the CPU kernels (docs/design.md, "Performance").
//
// A fresh multi-megabyte tensor from torch's CPU allocator is fresh anonymous memory: the kernel
// that first writes it takes one page fault per 4 KiB page, and on virtual machines that costs
// more than the writes themselves (about 1 ms per MiB measured, against 0.03 ms per MiB to
// rewrite memory already mapped). A training step frees its outputs before the next step asks for
// the same shapes again, so these buffers come from an allocator that keeps large freed blocks
// (sizes rounded up to 2 MiB) and hands them out again, already mapped. Blocks it maps anew are
// 2 MiB aligned and marked for transparent huge pages, which cuts their faults 512-fold where the
// kernel allows it (THP "madvise" or "always").
//
// The cache holds at most a fixed share of physical memory (kept_bytes_limit); a freed block that
// would exceed it goes back to the system. Buffers are uninitialised, like at::empty. Memory comes
// from glibc (posix_memalign), so heap statistics count cached blocks as in use.
#pragma once

#include <ATen/core/Tensor.h>

namespace pesc {

// A new uninitialised contiguous CPU tensor of t's sizes and dtype: on the reusable allocator from
// 1 MiB up, below that from torch's (whose arenas already reuse small blocks).
at::Tensor reusable_like(const at::Tensor& t);

}  // namespace pesc

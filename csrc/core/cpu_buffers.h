// Reusable CPU output buffers for the CPU kernels (docs/design.md, "Performance").
//
// A fresh multi-megabyte tensor from torch's CPU allocator is fresh anonymous memory: the kernel
// that first writes it takes one page fault per 4 KiB page, and on virtual machines that costs
// more than the writes themselves (about 1 ms per MiB measured, against 0.03 ms per MiB to
// rewrite memory already mapped). A training step frees its outputs before the next step asks for
// the same shapes again, so these buffers come from an allocator that keeps freed blocks (sizes
// rounded up to a power of two from 64 KiB, to a multiple of 2 MiB from 2 MiB) and hands them out
// again, already mapped. glibc does not do that reliably for tensors of a few hundred KiB either:
// when a step's other ops free large temporaries it trims the heap, and the next step faults the
// pages in again. Blocks of 2 MiB and more are 2 MiB aligned and marked for transparent huge
// pages, which cuts their faults 512-fold where the kernel allows it (THP "madvise" or "always").
//
// The cache keeps at most `limit` bytes of freed blocks: by default an eighth of physical memory,
// or PESC_CPU_BUFFER_CACHE_BYTES when that is set at load time (0 turns the cache off); a freed
// block that would pass the limit goes back to the system. Like torch's CUDA caching allocator,
// the kept blocks can be returned at any time (empty_cpu_buffer_cache). Buffers are uninitialised,
// like at::empty. Memory comes from glibc (posix_memalign), so heap statistics count kept blocks as
// in use until they are returned.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <tuple>

namespace pesc {

// A new uninitialised contiguous CPU tensor of t's sizes and dtype: on the reusable allocator from
// 64 KiB up, below that from torch's (whose arenas reuse small blocks).
at::Tensor reusable_like(const at::Tensor& t);

// The outputs a validator allocated, each replaced by a reusable buffer of its shape.
template <typename... Ts>
std::tuple<Ts...> reusable(std::tuple<Ts...> outputs) {
  return std::apply([](const auto&... t) { return std::tuple<Ts...>{reusable_like(t)...}; }, outputs);
}

struct CpuBufferCacheStats {
  size_t kept_bytes;   // freed blocks held for reuse
  size_t limit_bytes;  // the most it keeps
};

CpuBufferCacheStats cpu_buffer_cache_stats();
// Returns every kept block to the system; blocks in use are unaffected.
void empty_cpu_buffer_cache();
// Sets the limit (0: keep nothing) and returns kept blocks beyond it to the system.
void set_cpu_buffer_cache_limit(size_t bytes);

}  // namespace pesc

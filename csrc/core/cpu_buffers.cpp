// The reusable CPU output allocator (contract and rationale in core/cpu_buffers.h): a free list
// of blocks keyed by their size class (block_size), guarded by a mutex. Allocation takes a
// cached block of exactly that size or maps a new one; the DataPtr's deleter puts the block back
// while the cache stays under its limit. The allocator object is never destroyed, so tensors that
// outlive static destruction still have a valid deleter.
#include "core/cpu_buffers.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace pesc {
namespace {

constexpr size_t kBlockAlign = size_t{2} << 20;  // the x86-64 huge page size
constexpr size_t kMinBytes = size_t{64} << 10;   // smaller tensors: torch's allocator
constexpr size_t kPageBytes = size_t{4} << 10;

// The size class of a request: below 2 MiB the next power of two (at most twice the request),
// from there on a multiple of 2 MiB.
size_t block_size(size_t bytes) {
  if (bytes >= kBlockAlign) return (bytes + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  size_t size = kMinBytes;
  while (size < bytes) size *= 2;
  return size;
}

// What the cache may keep unless told otherwise: PESC_CPU_BUFFER_CACHE_BYTES, else an eighth of
// physical memory.
size_t default_limit() {
  if (const char* env = std::getenv("PESC_CPU_BUFFER_CACHE_BYTES"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const unsigned long long bytes = std::strtoull(env, &end, 10);
    TORCH_CHECK(end != nullptr && *end == '\0', "PESC_CPU_BUFFER_CACHE_BYTES must be a number of bytes, got '", env,
                "'");
    return static_cast<size_t>(bytes);
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) / 8 : size_t{1} << 30;
}

class ReusableAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    const size_t size = block_size(bytes);
    void* block = take(size);
    if (block == nullptr) block = map_block(size);
    return {block, new Block{block, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  CpuBufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {kept_, limit_};
  }

  // Lowers the kept bytes to at most `limit` (and makes it the new limit when `set_limit`).
  void trim(size_t limit, bool set_limit) {
    std::vector<void*> returned;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (set_limit) limit_ = limit;
      for (auto& [size, blocks] : free_) {
        while (kept_ > limit && !blocks.empty()) {
          returned.push_back(blocks.back());
          blocks.pop_back();
          kept_ -= size;
        }
      }
    }
    for (void* block : returned) std::free(block);
  }

  static ReusableAllocator& instance() {
    static ReusableAllocator* allocator = new ReusableAllocator();  // never destroyed (see above)
    return *allocator;
  }

 private:
  struct Block {
    void* data;
    size_t size;
  };

  static void* map_block(size_t size) {
    void* block = nullptr;
    const bool huge = size >= kBlockAlign;
    if (posix_memalign(&block, huge ? kBlockAlign : kPageBytes, size) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(block, size, MADV_HUGEPAGE);  // advice only: without THP the block is still valid
#endif
    return block;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.find(size);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* block = it->second.back();
    it->second.pop_back();
    kept_ -= size;
    return block;
  }

  static void release(void* context) {
    const Block* block = static_cast<Block*>(context);
    instance().give_back(block->data, block->size);
    delete block;
  }

  void give_back(void* data, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (kept_ + size <= limit_) {
        free_[size].push_back(data);
        kept_ += size;
        return;
      }
    }
    std::free(data);
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t kept_ = 0;
  size_t limit_ = default_limit();
};

}  // namespace

CpuBufferCacheStats cpu_buffer_cache_stats() { return ReusableAllocator::instance().stats(); }

void empty_cpu_buffer_cache() { ReusableAllocator::instance().trim(0, false); }

void set_cpu_buffer_cache_limit(size_t bytes) { ReusableAllocator::instance().trim(bytes, true); }

at::Tensor reusable_like(const at::Tensor& t) {
  if (t.nbytes() < kMinBytes) return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
  return at::Tensor(at::detail::empty_generic(t.sizes(), &ReusableAllocator::instance(),
                                              c10::DispatchKeySet(c10::DispatchKey::CPU), t.scalar_type(),
                                              std::nullopt));
}

}  // namespace pesc

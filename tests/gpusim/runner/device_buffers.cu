// Guarded device buffers of one case (see device_buffers.h).
#include "device_buffers.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace gpusim {
namespace {

constexpr unsigned char kCanary[4] = {0xa5, 0xff, 0xff, 0x7f};  // little-endian 0x7fffffa5

void check(cudaError_t e, const char* what, const std::string& id) {
  if (e == cudaSuccess) return;
  std::fprintf(stderr, "runner: case %s: %s failed: %d\n", id.c_str(), what, static_cast<int>(e));
  std::exit(3);
}

size_t allocation_bytes(size_t shift, size_t size) { return kGuard + shift + size + kGuard; }

}  // namespace

CaseBuffers::CaseBuffers(const CaseSpec& spec) : case_id_(spec.id) {
  for (const BufferSpec& s : spec.buffers) {
    Buffer b{s.name,
             s.kind,
             false,
             nullptr,
             s.shift,
             s.size,
             s.kind == BufferKind::In ? s.bytes : std::vector<unsigned char>{}};
    if (b.kind != BufferKind::Null) allocate(b);
    buffers_.push_back(std::move(b));
  }
}

CaseBuffers::~CaseBuffers() {
  for (Buffer& b : buffers_)
    if (b.base != nullptr) cudaFree(b.base);
}

void CaseBuffers::allocate(Buffer& b) {
  const size_t total = allocation_bytes(b.shift, b.size);
  std::vector<unsigned char> host(total);
  for (size_t i = 0; i < total; ++i) host[i] = kCanary[i % 4];
  if (!b.input.empty()) std::memcpy(host.data() + kGuard + b.shift, b.input.data(), b.size);
  void* base = nullptr;
  check(cudaMalloc(&base, total), "cudaMalloc", case_id_);
  check(cudaMemcpy(base, host.data(), total, cudaMemcpyHostToDevice), "upload", case_id_);
  b.base = static_cast<unsigned char*>(base);
}

void* CaseBuffers::ptr(const std::string& name) const {
  for (const Buffer& b : buffers_) {
    if (b.name != name) continue;
    return b.kind == BufferKind::Null ? nullptr : b.base + kGuard + b.shift;
  }
  std::fprintf(stderr, "runner: case %s has no buffer %s\n", case_id_.c_str(), name.c_str());
  std::exit(2);
}

void* CaseBuffers::workspace(const std::string& name, size_t bytes) {
  Buffer b{name, BufferKind::Out, true, nullptr, 0, bytes, {}};
  allocate(b);
  buffers_.push_back(std::move(b));
  return buffers_.back().base + kGuard;
}

void CaseBuffers::report(ResultWriter& out) const {
  for (const Buffer& b : buffers_) {
    if (b.kind == BufferKind::Null) continue;
    const size_t total = allocation_bytes(b.shift, b.size);
    std::vector<unsigned char> host(total);
    check(cudaMemcpy(host.data(), b.base, total, cudaMemcpyDeviceToHost), "download", case_id_);
    const size_t data_begin = kGuard + b.shift, data_end = data_begin + b.size;
    bool guards_ok = true;
    for (size_t i = 0; i < total; ++i)
      if ((i < data_begin || i >= data_end) && host[i] != kCanary[i % 4]) guards_ok = false;
    std::vector<unsigned char> data(host.begin() + data_begin, host.begin() + data_end);
    if (b.kind == BufferKind::In) {
      out.buffer(b.name, "in", guards_ok, data == b.input, {});
    } else {
      out.buffer(b.name, b.runner_workspace ? "work" : "out", guards_ok, true, data);
    }
  }
}

}  // namespace gpusim

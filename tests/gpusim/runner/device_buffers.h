// Device buffers of one case, each inside guard zones.
//
// Every buffer is one cudaMalloc of kGuard + shift + size + kGuard bytes, filled entirely with the
// canary before the launch: the 4-byte word 0x7fffffa5 repeated (a NaN in fp32, fp16 and bf16, a
// huge positive int32/int64), then the inputs are copied in. After the launch every guard byte
// must still hold the canary (no write before or after a buffer), every input must be unchanged
// (launchers never write their inputs), and outputs come back to pytest. Outputs start as the
// canary rather than zero, so an element a kernel forgets to write shows up as NaN / garbage, and a
// kernel that reads a guard zone gets NaNs or out-of-range ids into its results.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "case_file.h"

namespace gpusim {

constexpr size_t kGuard = 256;

class CaseBuffers {
 public:
  explicit CaseBuffers(const CaseSpec& spec);
  ~CaseBuffers();
  CaseBuffers(const CaseBuffers&) = delete;
  CaseBuffers& operator=(const CaseBuffers&) = delete;

  // The device pointer of buffer NAME (nullptr for a `null` buffer); exits if the case has none.
  void* ptr(const std::string& name) const;
  template <typename T>
  T* as(const std::string& name) const {
    return static_cast<T*>(ptr(name));
  }
  // A buffer whose size only the runner knows (e.g. CUB scratch), guarded and reported as `work`.
  void* workspace(const std::string& name, size_t bytes);
  // Downloads every buffer, checks guards and inputs, and writes the case's `buf` lines.
  void report(ResultWriter& out) const;

 private:
  struct Buffer {
    std::string name;
    BufferKind kind;
    bool runner_workspace;
    unsigned char* base;  // the allocation; the data start at base + kGuard + shift
    size_t shift;
    size_t size;
    std::vector<unsigned char> input;
  };
  void allocate(Buffer& b);
  const std::string case_id_;
  std::vector<Buffer> buffers_;
};

}  // namespace gpusim

// The simulated-GPU runner: `runner CASES.txt RESULTS` runs every case of CASES.txt (one torch-free
// launcher call each, on guarded device buffers) and writes RESULTS.txt / RESULTS.bin for pytest
// to compare against the CPU kernels (formats in case_file.h; driver: tests/gpusim/check_gpusim.py).
// It is compiled for sm_75 and linked against GPGPU-Sim's libcudart (scripts/gpusim), but is plain
// CUDA: on a real GPU it runs the same cases.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "case_file.h"
#include "device_buffers.h"
#include "ops.h"

namespace gpusim {

OpFn find_op(const std::string& name) {
  for (OpFn (*family)(const std::string&) : {find_gating_op, find_permute_op, find_adapter_op, find_routing_op})
    if (OpFn fn = family(name)) return fn;
  return nullptr;
}

int64_t int_param(const CaseSpec& c, const char* key) {
  const auto it = c.ints.find(key);
  if (it == c.ints.end()) {
    std::fprintf(stderr, "runner: case %s lacks int %s\n", c.id.c_str(), key);
    std::exit(2);
  }
  return it->second;
}

float float_param(const CaseSpec& c, const char* key) {
  const auto it = c.floats.find(key);
  if (it == c.floats.end()) {
    std::fprintf(stderr, "runner: case %s lacks float %s\n", c.id.c_str(), key);
    std::exit(2);
  }
  return static_cast<float>(it->second);
}

pesc::DType dtype_param(const CaseSpec& c) { return static_cast<pesc::DType>(int_param(c, "dtype")); }

}  // namespace gpusim

int main(int argc, char** argv) {
  using namespace gpusim;
  if (argc != 3) {
    std::fprintf(stderr, "usage: runner CASES.txt RESULTS_PREFIX\n");
    return 2;
  }
  const std::vector<CaseSpec> cases = read_cases(argv[1]);
  ResultWriter out(argv[2]);
  for (const CaseSpec& c : cases) {
    const OpFn op = find_op(c.op);
    if (op == nullptr) {
      std::fprintf(stderr, "runner: case %s: unknown op %s\n", c.id.c_str(), c.op.c_str());
      return 2;
    }
    std::printf("RUNNER case %s: %s\n", c.id.c_str(), c.op.c_str());
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    CaseBuffers buffers(c);
    const cudaError_t launch = op(c, buffers);
    const cudaError_t sync = cudaDeviceSynchronize();
    out.begin_case(c.id);
    out.codes(static_cast<int>(launch), static_cast<int>(sync));
    buffers.report(out);
    out.end_case();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("RUNNER done %s: launch=%d sync=%d in %.1f s\n", c.id.c_str(), static_cast<int>(launch),
                static_cast<int>(sync), seconds);
    std::fflush(stdout);
  }
  return 0;
}

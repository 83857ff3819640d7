// Simulator reproducer: cudaFuncGetAttributes must report ptxVersion = 75 for kernels compiled
// for compute_75, in a program built from several .cu files (this one and other.cu). GPGPU-Sim
// 4.2 parsed ".target sm_75" with sscanf("%u") into an uninitialised field, so it reported
// whatever was in memory (0 in small one-file programs, garbage such as 32765 here). CUB picks its
// tuning policy, and so which kernels it launches, from that value (DeviceRadixSort then failed
// with cudaErrorInvalidDeviceFunction), and pesc_kernels' segment GEMMs refuse sm_80-only math
// from it. Fixed by scripts/gpusim/gpgpusim-pesc.patch, fix 2. Prints RESULT and PASS/FAIL.
#include <cstdio>

__global__ void here_kernel(float* p) { p[threadIdx.x] = 1.f; }
cudaError_t other_ptx_version(int* version);  // other.cu

int main() {
  cudaFuncAttributes attr{};
  const cudaError_t e1 = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(here_kernel));
  int other = -1;
  const cudaError_t e2 = other_ptx_version(&other);
  const bool ok = e1 == cudaSuccess && e2 == cudaSuccess && attr.ptxVersion == 75 && other == 75;
  std::printf("RESULT ptxVersion: %d here, %d in other.cu (want 75 and 75)\n", attr.ptxVersion, other);
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

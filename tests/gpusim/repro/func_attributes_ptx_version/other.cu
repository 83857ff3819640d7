// Second translation unit of the func_attributes_ptx_version reproducer (see main.cu).
#include <cuda_runtime.h>

__global__ void other_kernel(float* p) { p[threadIdx.x] = 2.f; }

cudaError_t other_ptx_version(int* version) {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(other_kernel));
  *version = attr.ptxVersion;
  return e;
}

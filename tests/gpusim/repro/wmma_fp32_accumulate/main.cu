// Simulator reproducer: one fp16 WMMA m16n16k16 product with an fp32 accumulator must equal the
// fp32 sum of the exact fp16 products (tensor cores multiply fp16 exactly and accumulate in fp32).
// Inputs are 1 + small multiples of 2^-10, so every product is exact in fp32 and every row sum
// (about 16.2) needs more than fp16's 11 significant bits: an accumulator rounded to fp16 on the
// way is off by ~1e-3 relative. GPGPU-Sim 4.2 did that (fixed by scripts/gpusim/gpgpusim-pesc.patch,
// fix 1). Prints RESULT and PASS/FAIL; exit status 0 on PASS.
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdio>

namespace wmma = nvcuda::wmma;

__global__ void one_tile(const __half* a, const __half* b, float* c) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

int main() {
  __half a[256], b[256];
  float c[256], want[256];
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2half(1.f + (i % 16) / 1024.f);
    b[i] = __float2half(1.f + (i / 16) / 1024.f + (i % 16) / 512.f);
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = 0.f;  // exact products, fp32 sum in k order
      for (int k = 0; k < 16; ++k) s += __half2float(a[i * 16 + k]) * __half2float(b[k * 16 + j]);
      want[i * 16 + j] = s;
    }
  __half *da, *db;
  float* dc;
  cudaMalloc(&da, sizeof(a));
  cudaMalloc(&db, sizeof(b));
  cudaMalloc(&dc, sizeof(c));
  cudaMemcpy(da, a, sizeof(a), cudaMemcpyHostToDevice);
  cudaMemcpy(db, b, sizeof(b), cudaMemcpyHostToDevice);
  one_tile<<<1, 32>>>(da, db, dc);
  const cudaError_t e = cudaDeviceSynchronize();
  cudaMemcpy(c, dc, sizeof(c), cudaMemcpyDeviceToHost);
  double worst = 0;
  for (int i = 0; i < 256; ++i) worst = std::fmax(worst, std::fabs(c[i] - want[i]) / want[i]);
  // fp32 sums in a different order may differ in the last bit or two, never by 1e-3
  const bool ok = e == cudaSuccess && worst < 1e-6;
  std::printf("RESULT wmma fp16 -> fp32: c[0] = %.9g (want %.9g), max relative error %.3e\n", c[0], want[0], worst);
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

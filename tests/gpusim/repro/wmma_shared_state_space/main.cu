// Simulator reproducer: fp16 WMMA fragments loaded from static shared memory. nvcc then writes
// `wmma.load.a.sync.aligned.row.m16n16k16.shared.f16 {...}, [%r], ldm` with a shared-window offset
// as the address; GPGPU-Sim 4.2 parsed the `.shared` of that instruction as part of the shape and
// treated every wmma load/store as .global, so it read the fragments from global memory at that
// offset (the product came out as zeros). Generic pointers (no state space) happened to work.
// Fixed by scripts/gpusim/gpgpusim-pesc.patch, fix 3. One warp, A [16 x 64] and B [64 x 32] in
// padded shared tiles (ldm 72), four k steps of 16, two output fragments; compared with a double
// sum of the exact products. Prints RESULT and PASS/FAIL; exit status 0 on PASS.
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdio>

namespace wmma = nvcuda::wmma;

constexpr int kLd = 72, kK = 64, kN = 32, kLdc = 36;

__global__ void shared_tiles(const __half* a, const __half* b, float* c) {
  __shared__ __align__(128) __half as[16 * kLd];
  __shared__ __align__(128) __half bs[kK * kLd];
  for (int i = threadIdx.x; i < 16 * kLd; i += 32) as[i] = a[i];
  for (int i = threadIdx.x; i < kK * kLd; i += 32) bs[i] = b[i];
  __syncwarp();
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  for (auto& f : acc) wmma::fill_fragment(f, 0.f);
  for (int kk = 0; kk < kK; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, as + kk, kLd);
    for (int n = 0; n < 2; ++n) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, bs + kk * kLd + n * 16, kLd);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
  for (int n = 0; n < 2; ++n) wmma::store_matrix_sync(c + n * 16, acc[n], kLdc, wmma::mem_row_major);
}

int main() {
  static __half a[16 * kLd], b[kK * kLd];
  static float c[16 * kLdc], want[16 * kLdc];
  unsigned s = 1;  // fixed LCG: values in [-1, 1] with 3 decimals
  auto next = [&s] {
    s = s * 1664525u + 1013904223u;
    return ((s >> 9) % 2001) / 1000.f - 1.f;
  };
  for (auto& v : a) v = __float2half(next());
  for (auto& v : b) v = __float2half(next());
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < kN; ++j) {
      double t = 0;
      for (int k = 0; k < kK; ++k) t += double(__half2float(a[i * kLd + k])) * __half2float(b[k * kLd + j]);
      want[i * kLdc + j] = float(t);
    }
  __half *da, *db;
  float* dc;
  cudaMalloc(&da, sizeof(a));
  cudaMalloc(&db, sizeof(b));
  cudaMalloc(&dc, sizeof(c));
  cudaMemcpy(da, a, sizeof(a), cudaMemcpyHostToDevice);
  cudaMemcpy(db, b, sizeof(b), cudaMemcpyHostToDevice);
  cudaMemset(dc, 0, sizeof(c));
  shared_tiles<<<1, 32>>>(da, db, dc);
  const cudaError_t e = cudaDeviceSynchronize();
  cudaMemcpy(c, dc, sizeof(c), cudaMemcpyDeviceToHost);
  double worst = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < kN; ++j) worst = std::fmax(worst, std::fabs(c[i * kLdc + j] - want[i * kLdc + j]));
  const bool ok = e == cudaSuccess && worst < 1e-4;  // |c| <= 64; fp32 sums in another order
  std::printf("RESULT wmma from .shared: c[0] = %g (want %g), max abs error %.3e\n", c[0], want[0], worst);
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

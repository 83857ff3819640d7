// Simulator reproducer: cub::DeviceRadixSort::SortPairs on more keys than one tile (CUB then runs
// its onesweep kernels: global histogram, exclusive sum, onesweep passes with decoupled look-back)
// must give the stable sort the host computes, and write nothing past its scratch storage. This is
// permute's sort (6 key bits for 60 experts, 8194 routed slots; 10 bits for 1024 experts). It
// failed in GPGPU-Sim 4.2 through three simulator bugs: __syncthreads_or's result never written
// back (fix 5), the { .reg .pred %p1; } block of that intrinsic writing the function's own %p1
// (fix 6), and %lanemask_le not implemented (fix 7; scripts/gpusim/gpgpusim-pesc.patch): wrong
// order, scratch overrun, then an abort. Prints RESULT and PASS/FAIL; exit status 0 on PASS.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

// Sorts n pseudo-random keys in [0, experts) on `bits` bits; true when exact.
static bool check(int n, int experts, int bits) {
  std::vector<unsigned> keys(n);
  std::vector<int> values(n);
  unsigned s = 7u + n;
  for (int i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    keys[i] = (s >> 8) % experts;
    values[i] = i;
  }
  size_t bytes = 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const unsigned*>(nullptr),
                                                  static_cast<unsigned*>(nullptr), static_cast<const int*>(nullptr),
                                                  static_cast<int*>(nullptr), n, 0, bits);
  constexpr size_t kGuard = 1024;  // canary bytes after the scratch storage
  unsigned *k_in, *k_out;
  int *v_in, *v_out;
  unsigned char* temp;
  cudaMalloc(&k_in, 4 * n);
  cudaMalloc(&k_out, 4 * n);
  cudaMalloc(&v_in, 4 * n);
  cudaMalloc(&v_out, 4 * n);
  cudaMalloc(&temp, bytes + kGuard);
  cudaMemset(temp, 0xab, bytes + kGuard);
  cudaMemcpy(k_in, keys.data(), 4 * n, cudaMemcpyHostToDevice);
  cudaMemcpy(v_in, values.data(), 4 * n, cudaMemcpyHostToDevice);
  if (e == cudaSuccess) e = cub::DeviceRadixSort::SortPairs(temp, bytes, k_in, k_out, v_in, v_out, n, 0, bits);
  const cudaError_t sync = cudaDeviceSynchronize();
  std::vector<unsigned> got_keys(n);
  std::vector<int> got_values(n);
  std::vector<unsigned char> guard(kGuard);
  cudaMemcpy(got_keys.data(), k_out, 4 * n, cudaMemcpyDeviceToHost);
  cudaMemcpy(got_values.data(), v_out, 4 * n, cudaMemcpyDeviceToHost);
  cudaMemcpy(guard.data(), temp + bytes, kGuard, cudaMemcpyDeviceToHost);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return keys[a] < keys[b]; });
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += got_values[i] != order[i] || got_keys[i] != keys[order[i]];
  const int overrun =
      static_cast<int>(std::count_if(guard.begin(), guard.end(), [](unsigned char c) { return c != 0xab; }));
  const bool ok = e == cudaSuccess && sync == cudaSuccess && wrong == 0 && overrun == 0;
  std::printf("RESULT %d keys < %d on %d bits: %d misplaced, %d scratch bytes overrun (status %d/%d)%s\n", n, experts,
              bits, wrong, overrun, static_cast<int>(e), static_cast<int>(sync), ok ? "" : " WRONG");
  cudaFree(k_in);
  cudaFree(k_out);
  cudaFree(v_in);
  cudaFree(v_out);
  cudaFree(temp);
  return ok;
}

int main() {
  bool ok = check(100, 8, 3);    // one tile: CUB's single-tile kernel (worked before the fixes)
  ok &= check(8194, 60, 6);      // onesweep, one pass
  ok &= check(12000, 1024, 10);  // onesweep, two passes
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

// Simulator reproducer: the special registers %lanemask_eq/_le/_lt/_ge/_gt hold the bit masks of
// the lanes equal to / up to / below / from / above the reading thread's lane (PTX ISA, special
// registers). GPGPU-Sim 4.2 aborted with "feature not implemented" on reading any of them; CUB's
// onesweep radix sort reads %lanemask_le. Fixed by scripts/gpusim/gpgpusim-pesc.patch, fix 7.
// Prints RESULT and PASS/FAIL; exit status 0 on PASS.
#include <cstdio>

__global__ void masks(unsigned* out) {
  unsigned eq, le, lt, ge, gt;
  asm("mov.u32 %0, %%lanemask_eq;" : "=r"(eq));
  asm("mov.u32 %0, %%lanemask_le;" : "=r"(le));
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(lt));
  asm("mov.u32 %0, %%lanemask_ge;" : "=r"(ge));
  asm("mov.u32 %0, %%lanemask_gt;" : "=r"(gt));
  unsigned* o = out + 5 * threadIdx.x;
  o[0] = eq, o[1] = le, o[2] = lt, o[3] = ge, o[4] = gt;
}

int main() {
  constexpr int kThreads = 64;  // two warps: lanes restart at 0 in the second
  unsigned got[5 * kThreads];
  unsigned* d;
  cudaMalloc(&d, sizeof(got));
  masks<<<1, kThreads>>>(d);
  const cudaError_t e = cudaDeviceSynchronize();
  cudaMemcpy(got, d, sizeof(got), cudaMemcpyDeviceToHost);
  int wrong = 0;
  for (int t = 0; t < kThreads; ++t) {
    const unsigned lane = t % 32, eq = 1u << lane;
    const unsigned want[5] = {eq, eq | (eq - 1), eq - 1, ~(eq - 1), ~(eq | (eq - 1))};
    for (int m = 0; m < 5; ++m) {
      if (got[5 * t + m] == want[m]) continue;
      if (++wrong <= 5) std::printf("RESULT thread %d mask %d: 0x%08x, want 0x%08x\n", t, m, got[5 * t + m], want[m]);
    }
  }
  const bool ok = e == cudaSuccess && wrong == 0;
  std::printf("RESULT %d of %d lane masks wrong\n", wrong, 5 * kThreads);
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

// Simulator reproducer: __syncthreads_or / _and / _count (PTX bar.red.or.pred, bar.red.and.pred,
// bar.red.popc.u32) return the reduction over every thread of the block, each time they are
// called. In GPGPU-Sim 4.2's functional mode their result was never written back (the
// destination register was read undefined, as 0 or "false"), and the per-barrier totals were
// never reset between calls. CUB's onesweep radix sort (DeviceRadixSort on more than one tile,
// here a few thousand keys) uses __syncthreads_or and sorted wrongly, overrunning its scratch
// memory. Fixed by scripts/gpusim/gpgpusim-pesc.patch, fix 5. Two blocks of 96 threads (three
// warps, the last one partly idle in the second call), three rounds of all three reductions.
// Prints RESULT and PASS/FAIL; exit status 0 on PASS.
#include <cstdio>

constexpr int kBlocks = 2, kThreads = 96, kRounds = 3;

// out[(block * kRounds + round) * 3 + {0, 1, 2}] = or, and, count of `vote` over the block
__global__ void reduce(int* out) {
  for (int round = 0; round < kRounds; ++round) {
    // round 0: only thread 5 votes; round 1: all but thread 70; round 2: every thread of block 1
    const bool vote = round == 0 ? threadIdx.x == 5 : round == 1 ? threadIdx.x != 70 : blockIdx.x == 1;
    const int any = __syncthreads_or(vote);
    const int all = __syncthreads_and(vote);
    const int count = __syncthreads_count(vote);
    if (threadIdx.x == kThreads - 1) {  // a thread of the last warp reports
      int* o = out + (blockIdx.x * kRounds + round) * 3;
      o[0] = any != 0;
      o[1] = all != 0;
      o[2] = count;
    }
  }
}

int main() {
  int* d_out;
  int got[kBlocks * kRounds * 3];
  cudaMalloc(&d_out, sizeof(got));
  cudaMemset(d_out, 0xff, sizeof(got));
  reduce<<<kBlocks, kThreads>>>(d_out);
  const cudaError_t e = cudaDeviceSynchronize();
  cudaMemcpy(got, d_out, sizeof(got), cudaMemcpyDeviceToHost);
  int wrong = 0;
  for (int b = 0; b < kBlocks; ++b)
    for (int r = 0; r < kRounds; ++r) {
      const int count = r == 0 ? 1 : r == 1 ? kThreads - 1 : (b == 1 ? kThreads : 0);
      const int want[3] = {count > 0, count == kThreads, count};
      const int* g = got + (b * kRounds + r) * 3;
      const bool ok = g[0] == want[0] && g[1] == want[1] && g[2] == want[2];
      wrong += !ok;
      std::printf("RESULT block %d round %d: or %d and %d count %d (want %d %d %d)%s\n", b, r, g[0], g[1], g[2],
                  want[0], want[1], want[2], ok ? "" : " WRONG");
    }
  const bool ok = e == cudaSuccess && wrong == 0;
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

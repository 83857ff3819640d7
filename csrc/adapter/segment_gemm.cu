// Segmented GEMM kernels shared by grouped_mm and the adapter (declared in segment_gemm.h):
//
//   segment_map_kernel          one warp: clamped offsets c[0..E] and row-tile starts (see the header);
//                               rows c[E] .. N (dropped slots) get no tile
//   segment_gemm_kernel         C[seg e] = A[seg e] @ B_e, one CTA per (row tile, 64 columns); the
//                               row tile comes from the device-side segment map, so there is no host
//                               sync and no padding, and a tile never straddles two experts
//   segment_weight_grad_kernel  C[e] = op(A[seg e])^T @ B[seg e], one CTA per (expert, 64 x 64 tile
//                               of C), reducing over the expert's rows in order: deterministic, no
//                               atomics; an empty expert gets zeros
//
// Layouts are row-major; T is float, __half or __nv_bfloat16 and accumulation is fp32 (WMMA for
// fp16/bf16 and for fp32 when TF32 is allowed, fp32 FMA otherwise). Grids are one-dimensional
// (blockIdx.x is 31-bit), so no expert count or column count hits a 65535 grid-dimension limit.
#include "adapter/segment_gemm.cuh"

namespace pesc {
namespace {

using namespace seg;

template <typename T, typename Op>
__device__ __forceinline__ T warp_inclusive_scan(T v, const Op& op) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int delta = 1; delta < 32; delta *= 2) {
    const T other = __shfl_up_sync(kFullWarpMask, v, delta);
    if (lane >= delta) v = op(v, other);
  }
  return v;
}

struct MaxOp {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return a > b ? a : b; }
};
struct SumOp {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return a + b; }
};

// One warp, 32 offsets per step: a running max (clamping) then a running sum of tiles per expert.
__global__ void segment_map_kernel(const int64_t* __restrict__ offsets, int E, int64_t N, int64_t* __restrict__ clamped,
                                   int64_t* __restrict__ tile_start) {
  const int lane = threadIdx.x;
  int64_t running_max = 0;
  for (int base = 0; base <= E; base += 32) {
    const int i = base + lane;
    const int64_t v = i <= E ? offsets[i] : 0;
    const int64_t m = MaxOp()(warp_inclusive_scan(v, MaxOp()), running_max);
    int64_t c = m < N ? m : N;
    if (i == 0) c = 0;
    if (i <= E) clamped[i] = c;
    running_max = __shfl_sync(kFullWarpMask, m, 31);
  }
  __syncwarp();  // clamped[] written by other lanes is read below
  int64_t running_tiles = 0;
  for (int base = 0; base < E; base += 32) {
    const int e = base + lane;
    const int64_t tiles = e < E ? (clamped[e + 1] - clamped[e] + kBM - 1) / kBM : 0;
    const int64_t inclusive = warp_inclusive_scan(tiles, SumOp());
    if (e < E) tile_start[e] = running_tiles + inclusive - tiles;
    running_tiles += __shfl_sync(kFullWarpMask, inclusive, 31);
  }
  if (lane == 0) tile_start[E] = running_tiles;
}

// Shared memory of a kBM x kBN tile product fed by kBM x BK and BK x kBN operand tiles; the fp32
// accumulator tile reuses the operands' memory once the main loop is done.
template <typename Math>
struct TileSmem {
  using S = typename Math::Smem;
  static constexpr int BK = Math::kBK;
  static constexpr int lda = BK + smem_pad<S>(), ldb = kBN + smem_pad<S>(), ldc = kBN + kAccPad;
  static constexpr int kABytes = smem_bytes<S>(kBM, BK, smem_pad<S>());
  static constexpr int kOperandBytes = kABytes + smem_bytes<S>(BK, kBN, smem_pad<S>());
  static constexpr int kAccBytes = smem_bytes<float>(kBM, kBN, kAccPad);
  static constexpr int kBytes = kOperandBytes > kAccBytes ? kOperandBytes : kAccBytes;
  S* As;
  S* Bs;
  float* Cs;
  __device__ explicit TileSmem(unsigned char* smem)
      : As(reinterpret_cast<S*>(smem)), Bs(reinterpret_cast<S*>(smem + kABytes)), Cs(reinterpret_cast<float*>(smem)) {}
};

template <typename T>
struct GemmArgs {
  const T* a;
  const T* b;
  T* c;
  const T* aux_in;
  T* aux_out;
  int64_t K;
  int64_t M;
  Activation act;
  float scaling;
};

// One CTA per (row tile, column tile); column tiles of a row tile are adjacent in the grid so the
// A rows they share are read from L2.
template <typename T, typename Math, bool B_TRANSPOSED, GemmEpilogue EPI>
__device__ __forceinline__ void segment_gemm_cta(const GemmArgs<T>& args, const SegmentMap& map, int64_t col_tiles) {
  using Smem = TileSmem<Math>;
  constexpr int BK = Smem::BK, lda = Smem::lda, ldb = Smem::ldb, ldc = Smem::ldc;
  __shared__ __align__(128) unsigned char smem[Smem::kBytes];
  const Smem tiles(smem);

  RowTile tile;
  if (!find_row_tile(map, blockIdx.x / col_tiles, tile)) return;
  const int64_t col0 = (blockIdx.x % col_tiles) * kBN;
  const int cols = static_cast<int>(args.M - col0 < kBN ? args.M - col0 : kBN);
  const T* a = args.a + tile.row0 * args.K;
  const T* b = args.b + tile.expert * args.K * args.M;

  typename Math::template Mma<kBM, kBN> mma;
  mma.zero();
  for (int64_t k0 = 0; k0 < args.K; k0 += BK) {
    const int depth = static_cast<int>(args.K - k0 < BK ? args.K - k0 : BK);
    load_tile<kBM, BK, true>(tiles.As, lda, a + k0, args.K, tile.rows, depth, Identity{});
    if constexpr (B_TRANSPOSED) {  // B_e(k, n) = w[e][n][k], w[e] is [M, K]
      load_tile<BK, kBN, false>(tiles.Bs, ldb, b + col0 * args.K + k0, args.K, depth, cols, Identity{});
    } else {  // B_e(k, n) = w[e][k][n], w[e] is [K, M]
      load_tile<BK, kBN, true>(tiles.Bs, ldb, b + k0 * args.M + col0, args.M, depth, cols, Identity{});
    }
    __syncthreads();
    mma.template mma<BK>(tiles.As, lda, tiles.Bs, ldb);
    __syncthreads();
  }
  mma.store(tiles.Cs, ldc);
  __syncthreads();
  write_tile<EPI, kBM, kBN>(tiles.Cs, ldc, args.c, args.M, tile.row0, tile.rows, col0, cols, args.aux_in, args.aux_out,
                            args.act, args.scaling);
}

template <typename T, typename Math, bool B_TRANSPOSED, GemmEpilogue EPI>
__global__ void __launch_bounds__(kThreads, 1)
    segment_gemm_kernel(GemmArgs<T> args, SegmentMap map, int64_t col_tiles) {
  if constexpr (kMathCompiled<Math>) segment_gemm_cta<T, Math, B_TRANSPOSED, EPI>(args, map, col_tiles);
}

template <typename T>
struct WeightGradArgs {
  const T* a;
  const T* b;
  T* c;
  int64_t K;
  int64_t M;
  Activation act;
  float scaling;
};

// One CTA per (expert, kBM x kBN tile of C[e]); block index = (e * k_tiles + k tile) * m_tiles + m tile.
template <typename T, typename Math, bool ACTIVATE_A>
__device__ __forceinline__ void segment_weight_grad_cta(const WeightGradArgs<T>& args, const SegmentMap& map,
                                                        int64_t k_tiles, int64_t m_tiles) {
  using Smem = TileSmem<Math>;
  constexpr int BK = Smem::BK /* segment rows per step */, lda = Smem::lda, ldb = Smem::ldb, ldc = Smem::ldc;
  __shared__ __align__(128) unsigned char smem[Smem::kBytes];
  const Smem tiles(smem);

  const int64_t block = blockIdx.x;
  const int64_t e = block / (k_tiles * m_tiles);
  const int64_t k0 = (block / m_tiles) % k_tiles * kBM;
  const int64_t n0 = block % m_tiles * kBN;
  const int k_valid = static_cast<int>(args.K - k0 < kBM ? args.K - k0 : kBM);
  const int n_valid = static_cast<int>(args.M - n0 < kBN ? args.M - n0 : kBN);
  const int64_t seg_end = map.offsets[e + 1];

  typename Math::template Mma<kBM, kBN> mma;
  mma.zero();
  for (int64_t r0 = map.offsets[e]; r0 < seg_end; r0 += BK) {
    const int depth = static_cast<int>(seg_end - r0 < BK ? seg_end - r0 : BK);
    // A_s(i, j) = op(a[r0 + j][k0 + i]): the transposed rows of the segment.
    if constexpr (ACTIVATE_A) {
      load_tile<kBM, BK, false>(tiles.As, lda, args.a + r0 * args.K + k0, args.K, k_valid, depth,
                                ScaledActivation{args.act, args.scaling});
    } else {
      load_tile<kBM, BK, false>(tiles.As, lda, args.a + r0 * args.K + k0, args.K, k_valid, depth, Identity{});
    }
    load_tile<BK, kBN, true>(tiles.Bs, ldb, args.b + r0 * args.M + n0, args.M, depth, n_valid, Identity{});
    __syncthreads();
    mma.template mma<BK>(tiles.As, lda, tiles.Bs, ldb);
    __syncthreads();
  }
  mma.store(tiles.Cs, ldc);
  __syncthreads();
  write_tile<GemmEpilogue::Store, kBM, kBN>(tiles.Cs, ldc, args.c + e * args.K * args.M, args.M, k0, k_valid, n0,
                                            n_valid, static_cast<const T*>(nullptr), static_cast<T*>(nullptr), args.act,
                                            args.scaling);
}

template <typename T, typename Math, bool ACTIVATE_A>
__global__ void __launch_bounds__(kThreads, 1)
    segment_weight_grad_kernel(WeightGradArgs<T> args, SegmentMap map, int64_t k_tiles, int64_t m_tiles) {
  if constexpr (kMathCompiled<Math>) segment_weight_grad_cta<T, Math, ACTIVATE_A>(args, map, k_tiles, m_tiles);
}

template <typename T, typename Math, bool B_TRANSPOSED, GemmEpilogue EPI>
cudaError_t launch_gemm(const SegmentGemm& g, const SegmentLaunch& launch) {
  const GemmArgs<T> args{static_cast<const T*>(g.a),
                         static_cast<const T*>(g.b),
                         static_cast<T*>(g.c),
                         static_cast<const T*>(g.aux_in),
                         static_cast<T*>(g.aux_out),
                         g.K,
                         g.M,
                         g.act,
                         g.scaling};
  const int64_t col_tiles = ceil_div(g.M, kBN);
  const int64_t blocks = row_tile_bound(launch.map.N, launch.map.E) * col_tiles;
  auto* kernel = segment_gemm_kernel<T, Math, B_TRANSPOSED, EPI>;
  PESC_CUDA_RETURN_IF_ERROR(check_math_arch<Math>(kernel));
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch.stream>>>(args, launch.map, col_tiles);
  return cudaGetLastError();
}

template <typename T, typename Math, bool ACTIVATE_A>
cudaError_t launch_weight_grad(const SegmentWeightGrad& g, const SegmentLaunch& launch) {
  const WeightGradArgs<T> args{
      static_cast<const T*>(g.a), static_cast<const T*>(g.b), static_cast<T*>(g.c), g.K, g.M, g.act, g.scaling};
  const int64_t k_tiles = ceil_div(g.K, kBM), m_tiles = ceil_div(g.M, kBN);
  const int64_t blocks = launch.map.E * k_tiles * m_tiles;
  auto* kernel = segment_weight_grad_kernel<T, Math, ACTIVATE_A>;
  PESC_CUDA_RETURN_IF_ERROR(check_math_arch<Math>(kernel));
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch.stream>>>(args, launch.map, k_tiles, m_tiles);
  return cudaGetLastError();
}

// Grid sizes are 31-bit.
bool grid_fits(int64_t blocks) { return blocks <= 0x7fffffff; }

}  // namespace

cudaError_t launch_segment_map(const int64_t* expert_offsets, int E, int64_t N, int64_t* workspace,
                               cudaStream_t stream) {
  segment_map_kernel<<<1, 32, 0, stream>>>(expert_offsets, E, N, workspace, workspace + E + 1);
  return cudaGetLastError();
}

SegmentMap segment_map_view(const int64_t* workspace, int E, int64_t N) { return {workspace, workspace + E + 1, E, N}; }

cudaError_t launch_segment_gemm(const SegmentGemm& g, const SegmentLaunch& launch) {
  if (launch.map.N == 0 || g.M == 0) return cudaSuccess;
  if (!grid_fits(row_tile_bound(launch.map.N, launch.map.E) * ceil_div(g.M, kBN))) return cudaErrorInvalidConfiguration;
  return PESC_DTYPE_SWITCH(launch.dtype, DeviceTypes, [&] {
    return PESC_BOOL_SWITCH(uses_tf32(launch), TF32, [&] {
      using Math = GemmMath<scalar_t, TF32>;
      if (!g.b_transposed && g.epilogue == GemmEpilogue::Store)
        return launch_gemm<scalar_t, Math, false, GemmEpilogue::Store>(g, launch);
      if (g.b_transposed && g.epilogue == GemmEpilogue::Store)
        return launch_gemm<scalar_t, Math, true, GemmEpilogue::Store>(g, launch);
      if (!g.b_transposed && g.epilogue == GemmEpilogue::PreActivation)
        return launch_gemm<scalar_t, Math, false, GemmEpilogue::PreActivation>(g, launch);
      if (g.b_transposed && g.epilogue == GemmEpilogue::ActivationGrad)
        return launch_gemm<scalar_t, Math, true, GemmEpilogue::ActivationGrad>(g, launch);
      return cudaErrorInvalidValue;  // a combination no op uses
    });
  });
}

cudaError_t launch_segment_weight_grad(const SegmentWeightGrad& g, const SegmentLaunch& launch) {
  if (g.K == 0 || g.M == 0) return cudaSuccess;
  if (!grid_fits(launch.map.E * ceil_div(g.K, kBM) * ceil_div(g.M, kBN))) return cudaErrorInvalidConfiguration;
  return PESC_DTYPE_SWITCH(launch.dtype, DeviceTypes, [&] {
    return PESC_BOOL_SWITCH(uses_tf32(launch), TF32, [&] {
      using Math = GemmMath<scalar_t, TF32>;
      return g.activate_a ? launch_weight_grad<scalar_t, Math, true>(g, launch)
                          : launch_weight_grad<scalar_t, Math, false>(g, launch);
    });
  });
}

}  // namespace pesc

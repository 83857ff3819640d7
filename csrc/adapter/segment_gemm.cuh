// Device building blocks of the segmented GEMMs (segment_gemm.cu, kernels.cu): row-tile lookup in
// the segment map, a bounds-checked global->shared tile loader, CTA-level tile products on shared
// memory (WMMA tensor cores for fp16/bf16 and, when allowed, TF32; exact fp32 FMA otherwise), and
// the epilogue that writes a tile of fp32 accumulators back to global memory.
//
// Every kernel runs kThreads = 128 threads (4 warps). A tile product accumulates
// C[BM x BN] += A_s[BM x KT] @ B_s[KT x BN] from shared memory, where A_s and B_s are row-major with
// leading dimensions padded by 16 bytes (smem_pad) to spread shared-memory banks. Tiles are always
// zero-filled past the matrix edges, so partial tiles and any K need no special cases. The order
// of every fp32 accumulation is fixed by the tile shapes, so results are bitwise reproducible.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "adapter/activations.h"
#include "adapter/segment_gemm.h"
#include "core/cuda_utils.cuh"

// Architectures: the fp32 FMA and fp16 WMMA paths compile for sm_75 and newer (the shipped builds
// are sm_80/sm_90; sm_75 PTX is what the functional-simulation tests run). bf16 and TF32 WMMA
// fragments exist from sm_80 only, so below sm_80 the kernels that need them compile to an empty
// body and their launchers refuse to launch them (check_math_arch).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#error "pesc_kernels' segmented GEMMs need sm_75 or newer, and sm_80 for bf16/TF32 (set PESC_CUDA_ARCHS)"
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define PESC_SEG_SM80_MMA 1  // bf16/TF32 WMMA available in this compilation pass (host pass included)
#else
#define PESC_SEG_SM80_MMA 0
#endif

namespace pesc {
namespace seg {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBM = static_cast<int>(kRowTile);  // rows per tile
constexpr int kBN = 64;                          // output columns per tile

// Shared-memory row padding: 16 bytes keeps WMMA's alignment rules (ldm a multiple of 16 bytes,
// fragment pointers 32-byte aligned) and shifts consecutive rows by four banks.
template <typename S>
constexpr int smem_pad() {
  return 16 / static_cast<int>(sizeof(S));
}
constexpr int kAccPad = 4;  // fp32 accumulator tiles

// Bytes of a [rows][cols + pad] shared array, rounded up to 128 so that arrays carved one after
// another out of one buffer stay 128-byte aligned.
template <typename S>
constexpr int smem_bytes(int rows, int cols, int pad) {
  return (rows * (cols + pad) * static_cast<int>(sizeof(S)) + 127) / 128 * 128;
}

// ---- segment map ----

struct RowTile {
  int expert;
  int64_t row0;  // first row of the tile in [0, N)
  int rows;      // valid rows, 1..kBM (a tile never crosses a segment boundary)
};

// Row tile t of the segmentation: expert e is the largest with tile_start[e] <= t (empty experts
// own no tiles and are skipped by taking the largest). False when t is past the last tile.
__device__ __forceinline__ bool find_row_tile(const SegmentMap& map, int64_t t, RowTile& tile) {
  if (t >= map.tile_start[map.E]) return false;
  int lo = 0, hi = map.E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (map.tile_start[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  tile.expert = lo;
  tile.row0 = map.offsets[lo] + (t - map.tile_start[lo]) * kBM;
  const int64_t left = map.offsets[lo + 1] - tile.row0;
  tile.rows = static_cast<int>(left < kBM ? left : kBM);
  return true;
}

// ---- global -> shared tile loads ----

struct Identity {
  __device__ __forceinline__ float operator()(float v) const { return v; }
};

struct ScaledActivation {
  Activation act;
  float scaling;
  __device__ __forceinline__ float operator()(float v) const { return scaling * activation_forward(act, v); }
};

// 16 bytes of a tile line, kept as raw bits between the global load and the shared-memory store
// (half the registers of widened fp32 for 16-bit types). All-zero bits are 0 in every dtype.
union Chunk {
  uint4 vec;
  float f[4];
  unsigned short h[8];
};

__device__ __forceinline__ void set_bits(Chunk& c, int u, float x) { c.f[u] = x; }
__device__ __forceinline__ void set_bits(Chunk& c, int u, __half x) { c.h[u] = __half_as_ushort(x); }
__device__ __forceinline__ void set_bits(Chunk& c, int u, __nv_bfloat16 x) { c.h[u] = __bfloat16_as_ushort(x); }

template <typename G>
__device__ __forceinline__ float chunk_value(const Chunk& c, int u);
template <>
__device__ __forceinline__ float chunk_value<float>(const Chunk& c, int u) {
  return c.f[u];
}
template <>
__device__ __forceinline__ float chunk_value<__half>(const Chunk& c, int u) {
  return __half2float(__ushort_as_half(c.h[u]));
}
template <>
__device__ __forceinline__ float chunk_value<__nv_bfloat16>(const Chunk& c, int u) {
  return __bfloat162float(__ushort_as_bfloat16(c.h[u]));
}

// Copies a TR x TC tile into dst[i * ldd + j] (shared, type S), converting and applying `op`.
// Tile element (i, j) is src[i * stride + j] when CONTIG_J (rows of a row-major matrix), else
// src[i + j * stride] (a transposed view). Elements with i >= rows or j >= cols are set to 0 and
// never read. Each thread moves 16-byte chunks along the contiguous index: one vector load when the
// chunk is in bounds and 16-byte aligned, else element by element. All loads of a thread are
// issued before its shared-memory stores, so they are in flight together; a plain copy (same
// type, no op, rows contiguous) is stored back as one 16-byte shared-memory store.
template <int TR, int TC, bool CONTIG_J, typename S, typename G, typename Op>
__device__ __forceinline__ void load_tile(S* dst, int ldd, const G* src, int64_t stride, int rows, int cols,
                                          const Op& op) {
  constexpr int V = 16 / static_cast<int>(sizeof(G));
  constexpr int kContig = CONTIG_J ? TC : TR;  // extent along the contiguous index
  constexpr int kStrided = CONTIG_J ? TR : TC;
  static_assert(kContig % V == 0, "tile extent along the contiguous index must be a multiple of 16 bytes");
  constexpr int kChunksPerLine = kContig / V;
  constexpr int kChunks = kStrided * kChunksPerLine;
  constexpr int kPerThread = (kChunks + kThreads - 1) / kThreads;
  constexpr bool kPlainCopy = CONTIG_J && std::is_same_v<S, G> && std::is_same_v<Op, Identity>;
  const int n_contig = CONTIG_J ? cols : rows;
  const int n_strided = CONTIG_J ? rows : cols;
  const bool aligned =
      ((reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(stride * static_cast<int64_t>(sizeof(G)))) % 16) == 0;
  Chunk chunk[kPerThread];
#pragma unroll
  for (int t = 0; t < kPerThread; ++t) {
    const int index = threadIdx.x + t * kThreads;
    const int s = index / kChunksPerLine;
    const int c0 = (index % kChunksPerLine) * V;
    const bool line_valid = index < kChunks && s < n_strided;
    if (line_valid && aligned && c0 + V <= n_contig) {
      chunk[t].vec = *reinterpret_cast<const uint4*>(src + s * stride + c0);
    } else {
      chunk[t].vec = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
      for (int u = 0; u < V; ++u)
        if (line_valid && c0 + u < n_contig) set_bits(chunk[t], u, src[s * stride + c0 + u]);
    }
  }
#pragma unroll
  for (int t = 0; t < kPerThread; ++t) {
    const int index = threadIdx.x + t * kThreads;
    if (index >= kChunks) continue;
    const int s = index / kChunksPerLine;
    const int c0 = (index % kChunksPerLine) * V;
    if constexpr (kPlainCopy) {
      *reinterpret_cast<uint4*>(dst + s * ldd + c0) = chunk[t].vec;  // 16-byte aligned: see smem_pad
    } else {
#pragma unroll
      for (int u = 0; u < V; ++u) {
        const bool valid = s < n_strided && c0 + u < n_contig;
        const int i = CONTIG_J ? s : c0 + u;
        const int j = CONTIG_J ? c0 + u : s;
        dst[i * ldd + j] = from_float<S>(valid ? op(chunk_value<G>(chunk[t], u)) : 0.f);
      }
    }
  }
}

// ---- CTA tile products ----

// Exact fp32: a 8 x 16 thread grid, thread (ty, tx) owning rows ty + 8 i and columns tx + 16 j, so
// a warp reads two A values (broadcast) and 16 consecutive B values per k.
template <int BM, int BN>
struct FmaMma {
  static constexpr int kRowThreads = 8;
  static constexpr int kColThreads = kThreads / kRowThreads;
  static constexpr int TM = BM / kRowThreads;
  static constexpr int TN = BN / kColThreads;
  static_assert(BM % kRowThreads == 0 && BN % kColThreads == 0, "FmaMma tile shape");
  float acc[TM][TN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
  }

  template <int KT>
  __device__ __forceinline__ void mma(const float* As, int lda, const float* Bs, int ldb) {
    const int ty = threadIdx.x / kColThreads, tx = threadIdx.x % kColThreads;
#pragma unroll 4
    for (int k = 0; k < KT; ++k) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[(ty + i * kRowThreads) * lda + k];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[k * ldb + tx + j * kColThreads];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(float* Cs, int ldc) const {
    const int ty = threadIdx.x / kColThreads, tx = threadIdx.x % kColThreads;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) Cs[(ty + i * kRowThreads) * ldc + tx + j * kColThreads] = acc[i][j];
  }
};

template <typename S>
struct WmmaTraits;
template <>
struct WmmaTraits<__half> {
  using Element = __half;
  static constexpr int K = 16;
};
#if PESC_SEG_SM80_MMA
template <>
struct WmmaTraits<__nv_bfloat16> {
  using Element = __nv_bfloat16;
  static constexpr int K = 16;
};
template <>
struct WmmaTraits<float> {  // TF32: fp32 in shared memory, rounded to TF32 in the fragments
  using Element = wmma::precision::tf32;
  static constexpr int K = 8;
};
#endif

// Tensor cores through WMMA 16x16xK fragments. BM = 16 * kWarps, so warp w owns fragment row w
// (tile rows 16 w .. 16 w + 15) across all BN / 16 fragment columns: each k step loads the warp's A
// fragment once and one B fragment per column.
template <typename S, int BM, int BN>
struct WmmaMma {
  using Traits = WmmaTraits<S>;
  static constexpr int kFragsN = BN / 16;
  static_assert(BM == 16 * kWarps && BN % 16 == 0, "WmmaMma tile shape");
  wmma::fragment<wmma::accumulator, 16, 16, Traits::K, float> acc[kFragsN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int n = 0; n < kFragsN; ++n) wmma::fill_fragment(acc[n], 0.f);
  }

  template <typename Fragment>
  __device__ __forceinline__ static void round_operand(Fragment& f) {
#if PESC_SEG_SM80_MMA                // (below sm_80 there is no TF32, and no __float_to_tf32 to name)
    if constexpr (Traits::K == 8) {  // TF32 operands are fp32 values rounded to TF32
#pragma unroll
      for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
    }
#endif
  }

  template <int KT>
  __device__ __forceinline__ void mma(const S* As, int lda, const S* Bs, int ldb) {
    static_assert(KT % Traits::K == 0, "reduction tile must be a multiple of the fragment depth");
    const S* a_rows = As + (threadIdx.x / 32) * 16 * lda;
#pragma unroll 1
    for (int kk = 0; kk < KT; kk += Traits::K) {
      wmma::fragment<wmma::matrix_a, 16, 16, Traits::K, typename Traits::Element, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, a_rows + kk, lda);
      round_operand(fa);
#pragma unroll
      for (int n = 0; n < kFragsN; ++n) {
        wmma::fragment<wmma::matrix_b, 16, 16, Traits::K, typename Traits::Element, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, Bs + kk * ldb + n * 16, ldb);
        round_operand(fb);
        wmma::mma_sync(acc[n], fa, fb, acc[n]);
      }
    }
  }

  __device__ __forceinline__ void store(float* Cs, int ldc) const {
    float* rows = Cs + (threadIdx.x / 32) * 16 * ldc;
#pragma unroll
    for (int n = 0; n < kFragsN; ++n) wmma::store_matrix_sync(rows + n * 16, acc[n], ldc, wmma::mem_row_major);
  }
};

// The arithmetic of one dtype: the shared-memory element type, the reduction depth per loaded
// tile, the tile product, and whether it needs sm_80 (bf16/TF32 WMMA).
struct FmaMath {
  using Smem = float;
  static constexpr int kBK = 32;
  static constexpr bool kNeedsSm80 = false;
  template <int BM, int BN>
  using Mma = FmaMma<BM, BN>;
};
struct Tf32Math {
  using Smem = float;
  static constexpr int kBK = 32;
  static constexpr bool kNeedsSm80 = true;
  template <int BM, int BN>
  using Mma = WmmaMma<float, BM, BN>;
};
template <typename T>
struct TensorMath {
  using Smem = T;
  static constexpr int kBK = 64;
  static constexpr bool kNeedsSm80 = std::is_same_v<T, __nv_bfloat16>;
  template <int BM, int BN>
  using Mma = WmmaMma<T, BM, BN>;
};

// The arithmetic of global element type T: fp16/bf16 tensor cores, or for fp32 TF32 tensor cores
// when allowed and exact FMA otherwise. (GemmMath<half, true> is GemmMath<half, false>, so a
// PESC_BOOL_SWITCH over TF32 instantiates nothing twice.)
template <typename T, bool TF32>
using GemmMath =
    std::conditional_t<std::is_same_v<T, float>, std::conditional_t<TF32, Tf32Math, FmaMath>, TensorMath<T>>;

// Whether a launch's fp32 products may use TF32 (torch.backends.cuda.matmul.allow_tf32).
inline bool uses_tf32(const SegmentLaunch& launch) { return launch.allow_tf32 && launch.dtype == DType::Float32; }

// False in a device pass below sm_80 for a Math that needs sm_80: the kernels then compile their
// body out (`if constexpr`), so no bf16/TF32 fragment type is instantiated there.
template <typename Math>
constexpr bool kMathCompiled = !Math::kNeedsSm80 || PESC_SEG_SM80_MMA;

// Host side, before launching `kernel` with a Math that needs sm_80: cudaErrorNoKernelImageForDevice
// when the image the device would run was compiled for an older virtual architecture (its body is
// empty there, see kMathCompiled), so such a launch fails clearly instead of leaving outputs unset.
// cudaFuncGetAttributes is a host-side query: no launch, no sync.
template <typename Math, typename Kernel>
cudaError_t check_math_arch(Kernel* kernel) {
  if constexpr (Math::kNeedsSm80) {
    cudaFuncAttributes attr{};  // zero: a runtime that fills in nothing reads as "too old"
    PESC_CUDA_RETURN_IF_ERROR(cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(kernel)));
    if (attr.ptxVersion < 80) return cudaErrorNoKernelImageForDevice;
  }
  return cudaSuccess;
}

// ---- epilogue ----

// Writes the valid rows x cols of a BM x BN fp32 tile Cs (leading dimension ldc) to out[(row0 + i)
// * ld + col0 + j], coalesced along j, applying the GemmEpilogue (aux tensors share out's layout).
template <GemmEpilogue EPI, int BM, int BN, typename T>
__device__ __forceinline__ void write_tile(const float* Cs, int ldc, T* out, int64_t ld, int64_t row0, int rows,
                                           int64_t col0, int cols, const T* aux_in, T* aux_out, Activation act,
                                           float scaling) {
  for (int idx = threadIdx.x; idx < BM * BN; idx += kThreads) {
    const int i = idx / BN, j = idx % BN;
    if (i >= rows || j >= cols) continue;
    const int64_t o = (row0 + i) * ld + col0 + j;
    const float v = Cs[i * ldc + j];
    if constexpr (EPI == GemmEpilogue::Store) {
      out[o] = from_float<T>(v);
    } else if constexpr (EPI == GemmEpilogue::PreActivation) {
      const T h = from_float<T>(v);
      out[o] = h;
      aux_out[o] = from_float<T>(scaling * activation_forward(act, to_float(h)));
    } else {
      out[o] = from_float<T>(scaling * activation_derivative(act, to_float(aux_in[o])) * v);
    }
  }
}

}  // namespace seg
}  // namespace pesc

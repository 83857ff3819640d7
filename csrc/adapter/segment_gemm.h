// Torch-free launchers of the segmented GEMM kernels in segment_gemm.cu, the building blocks of the
// grouped_mm and adapter ops (adapter/kernels.cu composes them).
//
// Rows are grouped by expert: expert e owns rows offsets[e] .. offsets[e+1] of every [N, *] matrix.
// All matrices are row-major in the op's dtype (fp32/fp16/bf16); accumulation is fp32.
//   segment GEMM:  C[seg e] = A[seg e] @ B_e        A [N, K], C [N, M], B_e = w[e] ([K, M]) or w[e]^T
//                                                   (w [E, M, K]); tiles of kRowTile rows x 64 columns.
//   weight grad:   C[e] = op(A[seg e])^T @ B[seg e]  A [N, K], B [N, M], C [E, K, M]; op is the
//                                                   identity or scaling * act(.); a tiled reduction
//                                                   over the expert's rows per output tile: no atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "adapter/activations.h"
#include "core/dtype.h"

namespace pesc {

// Rows per row tile of every segmented kernel (the segment map is built for this tile height).
constexpr int64_t kRowTile = 64;

// Device-side view of the expert segments, built by launch_segment_map without a host sync:
//   offsets[0..E]:    the caller's offsets clamped to a valid segmentation (see launch_segment_map);
//   tile_start[0..E]: first row tile of each expert; tile_start[E] is the number of row tiles.
struct SegmentMap {
  const int64_t* offsets;
  const int64_t* tile_start;
  int E;
  int64_t N;
};

// What every segmented launch shares.
struct SegmentLaunch {
  SegmentMap map;
  DType dtype;
  bool allow_tf32;  // fp32 products may use TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)
  cudaStream_t stream;
};

// int64 words of workspace launch_segment_map needs.
inline int64_t segment_map_workspace(int E) { return 2 * (static_cast<int64_t>(E) + 1); }

// Builds the SegmentMap in `workspace` with one tiny kernel. The offsets are not validated (that
// would need a host sync); they are clamped instead, so no kernel ever reads out of bounds:
//   c[0] = 0,  c[e] = min(N, max(0, offsets[0], ..., offsets[e])) for 0 < e <= E.
// Valid offsets (offsets[E] <= N: rows past offsets[E] are dropped slots) are left unchanged; rows
// c[E] .. N belong to no expert and no tile.
cudaError_t launch_segment_map(const int64_t* expert_offsets, int E, int64_t N, int64_t* workspace,
                               cudaStream_t stream);
SegmentMap segment_map_view(const int64_t* workspace, int E, int64_t N);

// Upper bound of the number of row tiles over all experts: each segment adds at most one partial tile.
inline int64_t row_tile_bound(int64_t N, int E) { return (N + kRowTile - 1) / kRowTile + E; }

// What the segment GEMM writes besides (or instead of) C = acc.
enum class GemmEpilogue {
  Store,           // C = acc
  PreActivation,   // C = h = acc, aux_out = scaling * act(h)       (adapter forward, first pass)
  ActivationGrad,  // C = scaling * act'(aux_in) * acc              (adapter backward: dh from dA)
};

struct SegmentGemm {
  const void* a;       // [N, K]
  const void* b;       // w [E, K, M], or [E, M, K] when b_transposed
  void* c;             // [N, M]
  const void* aux_in;  // [N, M] (ActivationGrad: the pre-activation h)
  void* aux_out;       // [N, M] (PreActivation: the activation)
  int64_t K;
  int64_t M;
  bool b_transposed;
  GemmEpilogue epilogue;
  Activation act;
  float scaling;
};

struct SegmentWeightGrad {
  const void* a;  // [N, K]
  const void* b;  // [N, M]
  void* c;        // [E, K, M]
  int64_t K;
  int64_t M;
  bool activate_a;  // use scaling * act(a) in place of a (adapter: the activation from h)
  Activation act;
  float scaling;
};

cudaError_t launch_segment_gemm(const SegmentGemm& gemm, const SegmentLaunch& launch);
cudaError_t launch_segment_weight_grad(const SegmentWeightGrad& grad, const SegmentLaunch& launch);

}  // namespace pesc

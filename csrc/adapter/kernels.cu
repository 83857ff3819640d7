// CUDA grouped_mm and PESC adapter (docs/design.md, "Grouped GEMMs"): the fused adapter forward kernel, and the
// op-level launchers that compose it with the segment GEMMs of segment_gemm.cu.
//
//   grouped_mm   y = x @ w[e]                       one segment GEMM
//     backward   dx = dy @ w[e]^T                   segment GEMM (transposed B)
//                dw[e] = x[seg]^T @ dy[seg]         weight-grad reduction
//   adapter      h = x @ w_down[e],  a = scaling * act(h),  y = a @ w_up[e]
//     r <= 128:  adapter_fused_kernel, one CTA per 64-row tile of one expert: h for all r columns
//                accumulates over d in registers, goes to global once (saved for the backward)
//                and, activated, into shared memory, where it stays while the CTA sweeps the
//                output 64 columns at a time. x is read once and y written once.
//     r > 128:   segment GEMM with the PreActivation epilogue (h and a to global), then a @ w_up.
//     backward   dh = scaling * act'(h) * (dy @ w_up[e]^T)   segment GEMM, ActivationGrad epilogue
//                dx = dh @ w_down[e]^T                       segment GEMM
//                dw_down[e] = x[seg]^T @ dh[seg]             weight-grad reduction
//                dw_up[e] = (scaling * act(h))[seg]^T @ dy[seg]   weight grad, activation on load
// The backward recomputes a from the saved h with the same expression and rounds it to the op's
// dtype where the forward does, so it uses the activation the forward used. Every launch goes to
// the caller's stream; nothing reads device memory back to the host.
#include "adapter/kernels.h"
#include "adapter/segment_gemm.cuh"

namespace pesc {
namespace {

using namespace seg;

// Shared-memory plan of the fused kernel: the activation tile lives for the whole CTA; the phase-1
// buffers (x tile, w_down tile, fp32 h) and the phase-3 buffers (w_up tile, fp32 y) share memory.
template <typename Math, int R_PAD>
struct FusedLayout {
  using S = typename Math::Smem;
  static constexpr int BK = Math::kBK;
  static constexpr int kPad = smem_pad<S>();
  static constexpr int ld_act = R_PAD + kPad;   // a:      [kBM][R_PAD]  S
  static constexpr int ld_x = BK + kPad;        // x:      [kBM][BK]     S
  static constexpr int ld_wd = R_PAD + kPad;    // w_down: [BK][R_PAD]   S
  static constexpr int ld_h = R_PAD + kAccPad;  // h:      [kBM][R_PAD]  fp32
  static constexpr int ld_wu = kBN + kPad;      // w_up:   [R_PAD][kBN]  S
  static constexpr int ld_y = kBN + kAccPad;    // y:      [kBM][kBN]    fp32
  static constexpr int kActBytes = smem_bytes<S>(kBM, R_PAD, kPad);
  static constexpr int kXBytes = smem_bytes<S>(kBM, BK, kPad);
  static constexpr int kWdBytes = smem_bytes<S>(BK, R_PAD, kPad);
  static constexpr int kHBytes = smem_bytes<float>(kBM, R_PAD, kAccPad);
  static constexpr int kWuBytes = smem_bytes<S>(R_PAD, kBN, kPad);
  static constexpr int kYBytes = smem_bytes<float>(kBM, kBN, kAccPad);
  static constexpr int kPhase1 = kXBytes + kWdBytes + kHBytes;
  static constexpr int kPhase3 = kWuBytes + kYBytes;
  static constexpr int kBytes = kActBytes + (kPhase1 > kPhase3 ? kPhase1 : kPhase3);
};

template <typename T>
struct AdapterArgs {
  const T* x;
  const T* w_down;
  const T* w_up;
  T* y;
  T* h;
  int64_t d;
  int r;
  Activation act;
  float scaling;
};

template <typename T, typename Math, int R_PAD>
__device__ __forceinline__ void adapter_fused_cta(const AdapterArgs<T>& args, const SegmentMap& map) {
  using L = FusedLayout<Math, R_PAD>;
  using S = typename Math::Smem;
  constexpr int BK = Math::kBK;
  extern __shared__ __align__(128) unsigned char smem[];
  S* act_s = reinterpret_cast<S*>(smem);
  S* x_s = reinterpret_cast<S*>(smem + L::kActBytes);
  S* wd_s = reinterpret_cast<S*>(smem + L::kActBytes + L::kXBytes);
  float* h_s = reinterpret_cast<float*>(smem + L::kActBytes + L::kXBytes + L::kWdBytes);
  S* wu_s = reinterpret_cast<S*>(smem + L::kActBytes);
  float* y_s = reinterpret_cast<float*>(smem + L::kActBytes + L::kWuBytes);

  RowTile tile;
  if (!find_row_tile(map, blockIdx.x, tile)) return;
  const int64_t d = args.d;
  const int r = args.r;
  const T* x = args.x + tile.row0 * d;
  const T* w_down = args.w_down + tile.expert * d * r;
  const T* w_up = args.w_up + tile.expert * r * d;

  // Phase 1: h = x @ w_down, all R_PAD rank columns at once (columns >= r load as zeros).
  {
    typename Math::template Mma<kBM, R_PAD> mma;
    mma.zero();
    for (int64_t k0 = 0; k0 < d; k0 += BK) {
      const int depth = static_cast<int>(d - k0 < BK ? d - k0 : BK);
      load_tile<kBM, BK, true>(x_s, L::ld_x, x + k0, d, tile.rows, depth, Identity{});
      load_tile<BK, R_PAD, true>(wd_s, L::ld_wd, w_down + k0 * r, r, depth, r, Identity{});
      __syncthreads();
      mma.template mma<BK>(x_s, L::ld_x, wd_s, L::ld_wd);
      __syncthreads();
    }
    mma.store(h_s, L::ld_h);
  }
  __syncthreads();

  // Phase 2: h (rounded to T) to global for the backward; a = scaling * act(h) into shared memory,
  // zero past r and past the tile's rows so the padding contributes nothing.
  for (int idx = threadIdx.x; idx < kBM * R_PAD; idx += kThreads) {
    const int i = idx / R_PAD, j = idx % R_PAD;
    float a = 0.f;
    if (i < tile.rows && j < r) {
      const T h = from_float<T>(h_s[i * L::ld_h + j]);
      args.h[(tile.row0 + i) * r + j] = h;
      a = args.scaling * activation_forward(args.act, to_float(h));
    }
    act_s[i * L::ld_act + j] = from_float<S>(a);
  }
  __syncthreads();  // phase 3 reuses the phase-1 buffers

  // Phase 3: y = a @ w_up, kBN output columns at a time.
  typename Math::template Mma<kBM, kBN> mma;
  for (int64_t n0 = 0; n0 < d; n0 += kBN) {
    const int cols = static_cast<int>(d - n0 < kBN ? d - n0 : kBN);
    load_tile<R_PAD, kBN, true>(wu_s, L::ld_wu, w_up + n0, d, r, cols, Identity{});
    __syncthreads();
    mma.zero();
    mma.template mma<R_PAD>(act_s, L::ld_act, wu_s, L::ld_wu);
    mma.store(y_s, L::ld_y);
    __syncthreads();
    write_tile<GemmEpilogue::Store, kBM, kBN>(y_s, L::ld_y, args.y, d, tile.row0, tile.rows, n0, cols,
                                              static_cast<const T*>(nullptr), static_cast<T*>(nullptr), args.act,
                                              args.scaling);
    __syncthreads();  // y_s and wu_s are rewritten by the next column tile
  }
}

template <typename T, typename Math, int R_PAD>
__global__ void __launch_bounds__(kThreads, 1) adapter_fused_kernel(AdapterArgs<T> args, SegmentMap map) {
  if constexpr (kMathCompiled<Math>) adapter_fused_cta<T, Math, R_PAD>(args, map);
}

template <typename T, typename Math, int R_PAD>
cudaError_t launch_fused(const AdapterArgs<T>& args, const SegmentLaunch& launch) {
  constexpr int bytes = FusedLayout<Math, R_PAD>::kBytes;
  auto* kernel = adapter_fused_kernel<T, Math, R_PAD>;
  PESC_CUDA_RETURN_IF_ERROR(check_math_arch<Math>(kernel));
  // Above 48 KiB of dynamic shared memory needs an opt-in (a host-side attribute, no sync).
  PESC_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  kernel<<<static_cast<unsigned>(row_tile_bound(launch.map.N, launch.map.E)), kThreads, bytes, launch.stream>>>(
      args, launch.map);
  return cudaGetLastError();
}

cudaError_t launch_adapter_fused(const void* x, const void* w_down, const void* w_up, void* y, void* h, int64_t d,
                                 int64_t r, Activation act, float scaling, const SegmentLaunch& launch) {
  return PESC_DTYPE_SWITCH(launch.dtype, DeviceTypes, [&] {
    return PESC_BOOL_SWITCH(uses_tf32(launch), TF32, [&] {
      using Math = GemmMath<scalar_t, TF32>;
      const AdapterArgs<scalar_t> args{static_cast<const scalar_t*>(x),
                                       static_cast<const scalar_t*>(w_down),
                                       static_cast<const scalar_t*>(w_up),
                                       static_cast<scalar_t*>(y),
                                       static_cast<scalar_t*>(h),
                                       d,
                                       static_cast<int>(r),
                                       act,
                                       scaling};
      if (r <= 16) return launch_fused<scalar_t, Math, 16>(args, launch);
      if (r <= 32) return launch_fused<scalar_t, Math, 32>(args, launch);
      if (r <= 64) return launch_fused<scalar_t, Math, 64>(args, launch);
      return launch_fused<scalar_t, Math, static_cast<int>(kMaxFusedRank)>(args, launch);
    });
  });
}

SegmentGemm gemm(const void* a, const void* b, void* c, int64_t K, int64_t M, bool b_transposed,
                 GemmEpilogue epilogue = GemmEpilogue::Store, Activation act = Activation::Identity,
                 float scaling = 1.f, const void* aux_in = nullptr, void* aux_out = nullptr) {
  return {a, b, c, aux_in, aux_out, K, M, b_transposed, epilogue, act, scaling};
}

}  // namespace

cudaError_t launch_grouped_mm(const void* x, const void* w, void* y, int64_t K, int64_t M,
                              const SegmentLaunch& launch) {
  return launch_segment_gemm(gemm(x, w, y, K, M, false), launch);
}

cudaError_t launch_grouped_mm_backward(const void* grad_y, const void* x, const void* w, void* grad_x, void* grad_w,
                                       int64_t K, int64_t M, const SegmentLaunch& launch) {
  // dx [N, K] = dy [N, M] @ w[e]^T: a GEMM reducing over M whose B is w [E, K, M] read transposed.
  if (grad_x != nullptr) PESC_CUDA_RETURN_IF_ERROR(launch_segment_gemm(gemm(grad_y, w, grad_x, M, K, true), launch));
  if (grad_w != nullptr) {
    const SegmentWeightGrad g{x, grad_y, grad_w, K, M, false, Activation::Identity, 1.f};
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_weight_grad(g, launch));
  }
  return cudaSuccess;
}

cudaError_t launch_adapter(const void* x, const void* w_down, const void* w_up, void* y, void* h,
                           void* activation_buffer, int64_t d, int64_t r, Activation act, float scaling,
                           const SegmentLaunch& launch) {
  if (launch.map.N == 0) return cudaSuccess;
  if (adapter_forward_is_fused(r)) return launch_adapter_fused(x, w_down, w_up, y, h, d, r, act, scaling, launch);
  if (activation_buffer == nullptr) return cudaErrorInvalidValue;
  PESC_CUDA_RETURN_IF_ERROR(launch_segment_gemm(
      gemm(x, w_down, h, d, r, false, GemmEpilogue::PreActivation, act, scaling, nullptr, activation_buffer), launch));
  return launch_segment_gemm(gemm(activation_buffer, w_up, y, r, d, false), launch);
}

cudaError_t launch_adapter_backward(const void* grad_y, const void* x, const void* w_down, const void* w_up,
                                    const void* h, void* dh_buffer, void* grad_x, void* grad_w_down, void* grad_w_up,
                                    int64_t d, int64_t r, Activation act, float scaling, const SegmentLaunch& launch) {
  if (grad_x != nullptr || grad_w_down != nullptr) {
    if (dh_buffer == nullptr) return cudaErrorInvalidValue;
    // dh [N, r] = scaling * act'(h) * (dy [N, d] @ w_up[e]^T), w_up [E, r, d] read transposed.
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_gemm(
        gemm(grad_y, w_up, dh_buffer, d, r, true, GemmEpilogue::ActivationGrad, act, scaling, h), launch));
  }
  // dx [N, d] = dh @ w_down[e]^T, w_down [E, d, r] read transposed.
  if (grad_x != nullptr)
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_gemm(gemm(dh_buffer, w_down, grad_x, r, d, true), launch));
  if (grad_w_down != nullptr) {
    const SegmentWeightGrad g{x, dh_buffer, grad_w_down, d, r, false, act, scaling};
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_weight_grad(g, launch));
  }
  if (grad_w_up != nullptr) {
    const SegmentWeightGrad g{h, grad_y, grad_w_up, r, d, true, act, scaling};
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_weight_grad(g, launch));
  }
  return cudaSuccess;
}

}  // namespace pesc

// CUDA kernels for the permutation ops (docs/design.md, permutation): permute, unpermute, unpermute_backward.
//
// permute(x[T,d], indices[T,k], E) -> x_perm[N,d], row_map[T,k] int32, expert_offsets[E+1] int64:
//   1. keys[s] = expert id of routed slot s = t*k + j (clamped into [0, E)), slots[s] = s;
//   2. cub::DeviceRadixSort::SortPairs over the low ceil(log2 E) bits of the keys. It is stable,
//      so equal experts keep (t, j) order: sorted_slots[n] is the slot that lands on row n;
//   3. row_map[sorted_slots[n]] = n, and offsets[e] = #sorted keys < e (a binary search per e);
//   4. x_perm rows by scatter_rows_kernel (w = 1: a bitwise copy).
//   Every size follows from T*k and nothing is read back, so there is no host sync.
// unpermute forward = gather_rows_kernel: y[t] = residual[t] + sum_j w[t,j] * y_perm[row_map[t,j]],
//   fp32 accumulation in j order. permute's backward is this kernel with no weights or residual.
// unpermute backward = scatter_rows_kernel: grad_y_perm[row_map[t,j]] = w[t,j] * grad_y[t], plus
//   grad_weights[t,j] = <grad_y[t], y_perm[row_map[t,j]]> as a fixed-order warp reduction.
//
// Both row kernels give one warp to one token, so every output row has a single writer (row_map is
// a bijection onto [0, N)): no atomics, bitwise reproducible. Rows move as 16-byte packs when
// d * sizeof(dtype) % 16 == 0 and every row pointer is 16-byte aligned, else one element at a time.
// Row offsets are 64-bit (row * d can pass 2^31). row_map entries outside [0, N) are never
// dereferenced, so a corrupt row_map cannot cause an out-of-bounds access.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "permute/math.h"
#include "core/cuda_utils.cuh"
#include "permute/kernels.h"

namespace pesc {
namespace {

constexpr int kWarp = 32;
constexpr int kRowBlock = 256;                     // threads per block of the row kernels
constexpr int kTokensPerBlock = kRowBlock / kWarp;  // one warp per token
constexpr int kIndexBlock = 256;                   // threads per block of the index kernels

// VEC elements of one row moved as a single load/store (16 bytes when VEC = 16 / sizeof(scalar_t)).
template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// Binds constexpr VEC: 16-byte packs when `vectorized`, single elements otherwise.
#define PESC_DISPATCH_VEC(VECTORIZED, ...)                    \
  [&]() -> cudaError_t {                                      \
    if (VECTORIZED) {                                         \
      constexpr int VEC = 16 / static_cast<int>(sizeof(scalar_t)); \
      return __VA_ARGS__();                                   \
    }                                                         \
    constexpr int VEC = 1;                                    \
    return __VA_ARGS__();                                     \
  }()

bool rows_vectorizable(int64_t row_bytes, std::initializer_list<const void*> rows) {
  if (row_bytes % 16 != 0) return false;
  for (const void* p : rows)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;  // nullptr (absent) passes
  return true;
}

int sort_end_bit(int E) {  // keys lie in [0, E-1] < 2^bits
  int bits = 1;
  while ((1 << bits) < E) ++bits;
  return bits;
}

unsigned index_blocks(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kIndexBlock), 4096)); }
unsigned token_blocks(int64_t T) { return static_cast<unsigned>(ceil_div(T, kTokensPerBlock)); }

__device__ __forceinline__ int64_t grid_stride_begin() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__global__ void sort_keys_kernel(const int32_t* __restrict__ indices, int64_t N, int E, uint32_t* __restrict__ keys,
                                 int32_t* __restrict__ slots) {
  for (int64_t s = grid_stride_begin(); s < N; s += grid_stride()) {
    keys[s] = expert_sort_key(indices[s], E);
    slots[s] = static_cast<int32_t>(s);
  }
}

__global__ void row_map_kernel(const int32_t* __restrict__ sorted_slots, int64_t N, int32_t* __restrict__ row_map) {
  for (int64_t n = grid_stride_begin(); n < N; n += grid_stride()) row_map[sorted_slots[n]] = static_cast<int32_t>(n);
}

// offsets[e] = number of sorted keys < e, for e in [0, E] (std::lower_bound; offsets[E] = N).
__global__ void expert_offsets_kernel(const uint32_t* __restrict__ sorted_keys, int64_t N, int E,
                                      int64_t* __restrict__ offsets) {
  const int64_t e = grid_stride_begin();
  if (e > E) return;
  int64_t lo = 0, hi = N;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted_keys[mid] < static_cast<uint32_t>(e)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  offsets[e] = lo;
}

struct TokenWarp {
  int64_t token;
  int lane;
};

__device__ __forceinline__ TokenWarp token_warp() {
  return {static_cast<int64_t>(blockIdx.x) * kTokensPerBlock + threadIdx.x / kWarp,
          static_cast<int>(threadIdx.x % kWarp)};
}

// dst[row_map[t,j]] = w[t,j] * src[t] (w = 1 without weights: a bitwise copy); with y_perm also
// grad_weights[t,j] = <src[t], y_perm[row_map[t,j]]>.
template <typename scalar_t, int VEC>
__global__ void scatter_rows_kernel(const scalar_t* __restrict__ src, const int32_t* __restrict__ row_map,
                                    const float* __restrict__ weights, const scalar_t* __restrict__ y_perm, int64_t T,
                                    int k, int64_t d, scalar_t* __restrict__ dst, float* __restrict__ grad_weights) {
  using P = Pack<scalar_t, VEC>;
  const TokenWarp tw = token_warp();
  if (tw.token >= T) return;  // the whole warp leaves together, so the shuffles below see all 32 lanes
  const int64_t N = T * k;
  const int64_t packs = d / VEC;
  const P* in = reinterpret_cast<const P*>(src + tw.token * d);
  for (int j = 0; j < k; ++j) {
    const int64_t slot = tw.token * k + j;
    const int64_t row = row_map[slot];
    const float w = weights != nullptr ? weights[slot] : 1.f;
    float dot = 0.f;
    if (row >= 0 && row < N) {
      P* out = reinterpret_cast<P*>(dst + row * d);
      const P* y = y_perm != nullptr ? reinterpret_cast<const P*>(y_perm + row * d) : nullptr;
#pragma unroll 4
      for (int64_t c = tw.lane; c < packs; c += kWarp) {
        const P g = in[c];
        if (weights == nullptr) {
          out[c] = g;
        } else {
          P scaled;
#pragma unroll
          for (int i = 0; i < VEC; ++i) scaled.v[i] = from_float<scalar_t>(w * to_float(g.v[i]));
          out[c] = scaled;
        }
        if (y != nullptr) {
          const P yv = y[c];
#pragma unroll
          for (int i = 0; i < VEC; ++i) dot += to_float(g.v[i]) * to_float(yv.v[i]);
        }
      }
    }
    if (y_perm != nullptr) {
      dot = group_sum(dot, kWarp);
      if (tw.lane == 0) grad_weights[slot] = dot;
    }
  }
}

// out[t] = residual[t] + sum_j w[t,j] * src[row_map[t,j]], fp32 accumulation in j order.
template <typename scalar_t, int VEC>
__global__ void gather_rows_kernel(const scalar_t* __restrict__ src, const int32_t* __restrict__ row_map,
                                   const float* __restrict__ weights, const scalar_t* __restrict__ residual, int64_t T,
                                   int k, int64_t d, scalar_t* __restrict__ out) {
  using P = Pack<scalar_t, VEC>;
  const TokenWarp tw = token_warp();
  if (tw.token >= T) return;
  const int64_t N = T * k;
  const int64_t packs = d / VEC;
  const int32_t* rows = row_map + tw.token * k;
  const float* w_row = weights != nullptr ? weights + tw.token * k : nullptr;
  const P* res = residual != nullptr ? reinterpret_cast<const P*>(residual + tw.token * d) : nullptr;
  P* y = reinterpret_cast<P*>(out + tw.token * d);
  for (int64_t c = tw.lane; c < packs; c += kWarp) {
    float acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
#pragma unroll 4
    for (int j = 0; j < k; ++j) {
      const int64_t row = rows[j];
      if (row < 0 || row >= N) continue;
      const float w = w_row != nullptr ? w_row[j] : 1.f;
      const P v = reinterpret_cast<const P*>(src + row * d)[c];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = combine_term(acc[i], w, to_float(v.v[i]));
    }
    if (res != nullptr) {
      const P r = res[c];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] += to_float(r.v[i]);
    }
    P result;
#pragma unroll
    for (int i = 0; i < VEC; ++i) result.v[i] = from_float<scalar_t>(acc[i]);
    y[c] = result;
  }
}

cudaError_t launch_scatter_rows(const void* src, DType dtype, const int32_t* row_map, const float* weights,
                                const void* y_perm, int64_t T, int k, int64_t d, void* dst, float* grad_weights,
                                cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    const bool vectorized = rows_vectorizable(d * static_cast<int64_t>(sizeof(scalar_t)), {src, y_perm, dst});
    return PESC_DISPATCH_VEC(vectorized, [&] {
      scatter_rows_kernel<scalar_t, VEC><<<token_blocks(T), kRowBlock, 0, stream>>>(
          static_cast<const scalar_t*>(src), row_map, weights, static_cast<const scalar_t*>(y_perm), T, k, d,
          static_cast<scalar_t*>(dst), grad_weights);
      return cudaGetLastError();
    });
  });
}

// The CUB call both sizes the scratch (temp == nullptr) and sorts; both must see the same arguments.
cudaError_t radix_sort_slots(void* temp, size_t& temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                             const int32_t* slots_in, int32_t* slots_out, int64_t N, int E, cudaStream_t stream) {
  return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, slots_in, slots_out,
                                         static_cast<int>(N), 0, sort_end_bit(E), stream);
}

}  // namespace

cudaError_t permute_sort_temp_bytes(int64_t N, int E, size_t* bytes) {
  *bytes = 0;
  if (N == 0) return cudaSuccess;
  return radix_sort_slots(nullptr, *bytes, nullptr, nullptr, nullptr, nullptr, N, E, nullptr);
}

cudaError_t launch_permute(const void* x, DType dtype, const int32_t* indices, int64_t T, int64_t d, int k, int E,
                           uint32_t* keys, int32_t* slots, void* sort_temp, size_t sort_temp_bytes, void* x_perm,
                           int32_t* row_map, int64_t* expert_offsets, cudaStream_t stream) {
  const int64_t N = T * k;
  uint32_t* sorted_keys = keys + N;
  int32_t* sorted_slots = slots + N;
  if (N > 0) {
    sort_keys_kernel<<<index_blocks(N), kIndexBlock, 0, stream>>>(indices, N, E, keys, slots);
    PESC_CUDA_LAUNCH_CHECK();
    PESC_CUDA_RETURN_IF_ERROR(
        radix_sort_slots(sort_temp, sort_temp_bytes, keys, sorted_keys, slots, sorted_slots, N, E, stream));
    row_map_kernel<<<index_blocks(N), kIndexBlock, 0, stream>>>(sorted_slots, N, row_map);
    PESC_CUDA_LAUNCH_CHECK();
    PESC_CUDA_RETURN_IF_ERROR(
        launch_scatter_rows(x, dtype, row_map, nullptr, nullptr, T, k, d, x_perm, nullptr, stream));
  }
  expert_offsets_kernel<<<static_cast<unsigned>(ceil_div(E + 1, kIndexBlock)), kIndexBlock, 0, stream>>>(
      sorted_keys, N, E, expert_offsets);
  PESC_CUDA_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t launch_unpermute(const void* y_perm, DType dtype, const int32_t* row_map, const float* weights,
                             const void* residual, int64_t T, int k, int64_t d, void* y, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    const bool vectorized = rows_vectorizable(d * static_cast<int64_t>(sizeof(scalar_t)), {y_perm, residual, y});
    return PESC_DISPATCH_VEC(vectorized, [&] {
      gather_rows_kernel<scalar_t, VEC><<<token_blocks(T), kRowBlock, 0, stream>>>(
          static_cast<const scalar_t*>(y_perm), row_map, weights, static_cast<const scalar_t*>(residual), T, k, d,
          static_cast<scalar_t*>(y));
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_unpermute_backward(const void* grad_y, DType dtype, const int32_t* row_map, const float* weights,
                                      const void* y_perm, int64_t T, int k, int64_t d, void* grad_y_perm,
                                      float* grad_weights, cudaStream_t stream) {
  return launch_scatter_rows(grad_y, dtype, row_map, weights, y_perm, T, k, d, grad_y_perm, grad_weights, stream);
}

}  // namespace pesc

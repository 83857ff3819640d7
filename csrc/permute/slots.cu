// CUDA kernels for int64 ids and dropped slots of the permutation ops (docs/design.md, "Permutation"):
//
//   slot_buckets_kernel    buckets[s] = expert of slot s, from int32 or int64 ids: with drop_invalid
//                          E for an id outside [0, E) (the bucket after every expert), otherwise
//                          the id clamped into [0, E-1] (the CUDA rule for invalid ids)
//   mark_dropped_kernel    after launch_permute sorted the buckets over E + 1 experts: a dropped
//                          slot's row_map entry becomes ~row and its x_perm row zero
//   zero_slot_rows_kernel  unpermute_backward: the rows ~row_map[s] of dropped slots become zero
//                          (the scatter kernel writes only kept slots' rows)
// One thread per slot (the row kernels: a thread per slot, looping over the row); every element
// has one writer. Nothing is read back to the host, so dropping needs no sync either.
#include <algorithm>
#include <cstdint>

#include "core/cuda_utils.cuh"
#include "permute/kernels.h"
#include "permute/math.h"

namespace pesc {
namespace {

constexpr int kBlock = 256;

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kBlock), 4096)));
}

__device__ __forceinline__ int64_t thread_begin() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename Id>
__global__ void slot_buckets_kernel(const Id* __restrict__ ids, int64_t N, int E, bool drop_invalid,
                                    int32_t* __restrict__ buckets) {
  for (int64_t s = thread_begin(); s < N; s += thread_stride())
    buckets[s] =
        static_cast<int32_t>(drop_invalid ? expert_bucket_dropping(ids[s], E) : expert_bucket_clamped(ids[s], E));
}

template <typename scalar_t>
__global__ void mark_dropped_kernel(const int32_t* __restrict__ buckets, int64_t N, int E,
                                    int32_t* __restrict__ row_map, scalar_t* __restrict__ x_perm, int64_t d) {
  for (int64_t s = thread_begin(); s < N; s += thread_stride()) {
    if (buckets[s] != E) continue;
    const int32_t row = row_map[s];
    for (int64_t i = 0; i < d; ++i) x_perm[row * d + i] = from_float<scalar_t>(0.f);
    row_map[s] = dropped_row_entry(row);
  }
}

template <typename scalar_t>
__global__ void zero_slot_rows_kernel(const int32_t* __restrict__ row_map, int64_t N, int64_t d,
                                      scalar_t* __restrict__ rows) {
  for (int64_t s = thread_begin(); s < N; s += thread_stride()) {
    if (!is_dropped_entry(row_map[s])) continue;
    const int64_t row = decoded_row(row_map[s]);
    if (row >= N) continue;  // never write out of bounds, whatever row_map holds
    for (int64_t i = 0; i < d; ++i) rows[row * d + i] = from_float<scalar_t>(0.f);
  }
}

}  // namespace

cudaError_t launch_slot_buckets(const void* ids, bool ids_int64, int64_t N, int E, bool drop_invalid, int32_t* buckets,
                                cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  if (ids_int64) {
    slot_buckets_kernel<int64_t>
        <<<grid_for(N), kBlock, 0, stream>>>(static_cast<const int64_t*>(ids), N, E, drop_invalid, buckets);
  } else {
    slot_buckets_kernel<int32_t>
        <<<grid_for(N), kBlock, 0, stream>>>(static_cast<const int32_t*>(ids), N, E, drop_invalid, buckets);
  }
  return cudaGetLastError();
}

cudaError_t launch_mark_dropped_slots(const int32_t* buckets, int64_t N, int E, int32_t* row_map, void* x_perm,
                                      int64_t d, DType dtype, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return PESC_DTYPE_SWITCH(dtype, DeviceTypes, [&] {
    mark_dropped_kernel<scalar_t>
        <<<grid_for(N), kBlock, 0, stream>>>(buckets, N, E, row_map, static_cast<scalar_t*>(x_perm), d);
    return cudaGetLastError();
  });
}

cudaError_t launch_zero_dropped_slot_rows(const int32_t* row_map, int64_t N, int64_t d, DType dtype, void* rows,
                                          cudaStream_t stream) {
  if (N == 0 || d == 0) return cudaSuccess;
  return PESC_DTYPE_SWITCH(dtype, DeviceTypes, [&] {
    zero_slot_rows_kernel<scalar_t><<<grid_for(N), kBlock, 0, stream>>>(row_map, N, d, static_cast<scalar_t*>(rows));
    return cudaGetLastError();
  });
}

}  // namespace pesc

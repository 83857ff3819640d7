// Runner ops of the permutation launchers (permute/kernels.h). Parameters: dtype, T, d, k, E, and
// for permute_buckets ids_int64 and drop_invalid. Buffers: x/residual/y/grad_y [T, d];
// x_perm/y_perm/grad_y_perm/rows [T*k, d] (in the op's dtype); indices [T, k] int32 (int64 with
// ids_int64); row_map [T, k] int32; weights/grad_weights [T, k] fp32 (or null); offsets [E+1] int64.
// permute's sort workspaces (keys, slots, sort_temp), the slot buckets and the sort's own offsets
// are sized here and sent back as `work`.
#include "ops.h"
#include "permute/kernels.h"

namespace gpusim {
namespace {

// launch_permute of x by the int32 expert ids `ids` over E experts, with its sort workspaces.
cudaError_t sorted_permute(const CaseSpec& c, CaseBuffers& b, const int32_t* ids, int E, int64_t* offsets) {
  const int64_t T = int_param(c, "T"), k = int_param(c, "k"), N = T * k;
  size_t temp_bytes = 0;
  const cudaError_t sized = pesc::permute_sort_temp_bytes(N, E, &temp_bytes);
  if (sized != cudaSuccess) return sized;
  auto* keys = static_cast<uint32_t*>(b.workspace("keys", sizeof(uint32_t) * 2 * N));
  auto* slots = static_cast<int32_t*>(b.workspace("slots", sizeof(int32_t) * 2 * N));
  void* temp = b.workspace("sort_temp", temp_bytes);
  return pesc::launch_permute(b.ptr("x"), dtype_param(c), ids, T, int_param(c, "d"), static_cast<int>(k), E, keys,
                              slots, temp, temp_bytes, b.ptr("x_perm"), b.as<int32_t>("row_map"), offsets, nullptr);
}

cudaError_t permute(const CaseSpec& c, CaseBuffers& b) {
  return sorted_permute(c, b, b.as<const int32_t>("indices"), static_cast<int>(int_param(c, "E")),
                        b.as<int64_t>("offsets"));
}

// permute as the CUDA glue runs it for int64 ids or drop_invalid (permute/cuda.cpp): the ids become
// int32 buckets (launch_slot_buckets), launch_permute sorts them over E + 1 buckets when dropping
// (E + 2 offsets, in `sort_offsets`), launch_mark_dropped_slots marks the dropped slots, and the
// op's offsets are the first E + 1 of the sort's.
cudaError_t permute_buckets(const CaseSpec& c, CaseBuffers& b) {
  const int64_t N = int_param(c, "T") * int_param(c, "k"), d = int_param(c, "d");
  const int E = static_cast<int>(int_param(c, "E"));
  const bool drop_invalid = int_param(c, "drop_invalid") != 0;
  auto* buckets = static_cast<int32_t*>(b.workspace("buckets", sizeof(int32_t) * N));
  if (const cudaError_t e = pesc::launch_slot_buckets(b.ptr("indices"), int_param(c, "ids_int64") != 0, N, E,
                                                      drop_invalid, buckets, nullptr);
      e != cudaSuccess)
    return e;
  if (!drop_invalid) return sorted_permute(c, b, buckets, E, b.as<int64_t>("offsets"));
  auto* sort_offsets = static_cast<int64_t*>(b.workspace("sort_offsets", sizeof(int64_t) * (E + 2)));
  if (const cudaError_t e = sorted_permute(c, b, buckets, E + 1, sort_offsets); e != cudaSuccess) return e;
  if (const cudaError_t e = pesc::launch_mark_dropped_slots(buckets, N, E, b.as<int32_t>("row_map"), b.ptr("x_perm"), d,
                                                            dtype_param(c), nullptr);
      e != cudaSuccess)
    return e;
  return cudaMemcpyAsync(b.ptr("offsets"), sort_offsets, sizeof(int64_t) * (E + 1), cudaMemcpyDeviceToDevice, nullptr);
}

cudaError_t unpermute(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_unpermute(b.ptr("y_perm"), dtype_param(c), b.as<const int32_t>("row_map"),
                                b.as<const float>("weights"), b.ptr("residual"), int_param(c, "T"), int_param(c, "k"),
                                int_param(c, "d"), b.ptr("y"), nullptr);
}

cudaError_t unpermute_backward(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_unpermute_backward(b.ptr("grad_y"), dtype_param(c), b.as<const int32_t>("row_map"),
                                         b.as<const float>("weights"), b.ptr("y_perm"), int_param(c, "T"),
                                         int_param(c, "k"), int_param(c, "d"), b.ptr("grad_y_perm"),
                                         b.as<float>("grad_weights"), nullptr);
}

// unpermute_backward as the CUDA glue runs it: the scatter, then zero rows for the dropped slots.
cudaError_t unpermute_backward_dropped(const CaseSpec& c, CaseBuffers& b) {
  if (const cudaError_t e = unpermute_backward(c, b); e != cudaSuccess) return e;
  return pesc::launch_zero_dropped_slot_rows(b.as<const int32_t>("row_map"), int_param(c, "T") * int_param(c, "k"),
                                             int_param(c, "d"), dtype_param(c), b.ptr("grad_y_perm"), nullptr);
}

cudaError_t zero_dropped_slot_rows(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_zero_dropped_slot_rows(b.as<const int32_t>("row_map"), int_param(c, "T") * int_param(c, "k"),
                                             int_param(c, "d"), dtype_param(c), b.ptr("rows"), nullptr);
}

}  // namespace

OpFn find_permute_op(const std::string& name) {
  if (name == "permute") return permute;
  if (name == "unpermute") return unpermute;
  if (name == "unpermute_backward") return unpermute_backward;
  if (name == "permute_buckets") return permute_buckets;
  if (name == "unpermute_backward_dropped") return unpermute_backward_dropped;
  if (name == "zero_dropped_slot_rows") return zero_dropped_slot_rows;
  return nullptr;
}

}  // namespace gpusim

// Runner ops of the permutation launchers (permute/kernels.h). Parameters: dtype, T, d, k, E.
// Buffers: x/residual/y/grad_y [T, d]; x_perm/y_perm/grad_y_perm [T*k, d] (in the op's dtype);
// indices/row_map [T, k] int32; weights/grad_weights [T, k] fp32 (or null); offsets [E+1] int64.
// permute's sort workspaces (keys, slots, sort_temp) are sized here and sent back as `work`.
#include "ops.h"
#include "permute/kernels.h"

namespace gpusim {
namespace {

cudaError_t permute(const CaseSpec& c, CaseBuffers& b) {
  const int64_t T = int_param(c, "T"), k = int_param(c, "k"), N = T * k;
  const int E = static_cast<int>(int_param(c, "E"));
  size_t temp_bytes = 0;
  const cudaError_t sized = pesc::permute_sort_temp_bytes(N, E, &temp_bytes);
  if (sized != cudaSuccess) return sized;
  auto* keys = static_cast<uint32_t*>(b.workspace("keys", sizeof(uint32_t) * 2 * N));
  auto* slots = static_cast<int32_t*>(b.workspace("slots", sizeof(int32_t) * 2 * N));
  void* temp = b.workspace("sort_temp", temp_bytes);
  return pesc::launch_permute(b.ptr("x"), dtype_param(c), b.as<const int32_t>("indices"), T, int_param(c, "d"), k, E,
                              keys, slots, temp, temp_bytes, b.ptr("x_perm"), b.as<int32_t>("row_map"),
                              b.as<int64_t>("offsets"), nullptr);
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

}  // namespace

OpFn find_permute_op(const std::string& name) {
  if (name == "permute") return permute;
  if (name == "unpermute") return unpermute;
  if (name == "unpermute_backward") return unpermute_backward;
  return nullptr;
}

}  // namespace gpusim

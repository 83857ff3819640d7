// CPU kernels for the permutation ops (docs/design.md, "Permutation").
//
//   permute(x[T,d], indices[T,k] int32|int64, E, drop_invalid)
//       -> x_perm[N,d], row_map[T,k] int32, expert_offsets[E+1] int64
//   unpermute(y_perm[N,d], row_map, weights[T,k]?, residual[T,d]?) -> y[T,d]
//   unpermute_backward(grad_y[T,d], row_map, weights?, y_perm?) -> grad_y_perm[N,d], grad_weights[T,k]
// N = T*k; x, y_perm, residual and grad_y share one dtype (fp32/fp16/bf16); weights of any of the
// three are read as fp32 and grad_weights is returned in their dtype.
//
// The ops reduce to two row kernels that are each other's adjoint, both parallel over tokens so every
// output row has exactly one writer (no atomics, results independent of the thread count):
//   scatter_rows: dst[row_map[t,j]] = w[t,j] * src[t] (and optionally the dot <src[t], y_perm[row]>);
//                 permute's forward (w = 1: a plain memcpy per row) and unpermute's backward. A dropped
//                 slot (row_map = ~row < 0) writes zeros to its reserved row and has a zero dot.
//   gather_rows:  out[t] = residual[t] + sum_j w[t,j] * src[row_map[t,j]] in fp32, skipping dropped
//                 slots; unpermute's forward and, with no weights or residual, permute's backward.
// The counting sort itself is a serial pass over the N ids: it is tiny next to the row copies.
// The [*, d] outputs come from the reusable CPU buffers of core/cpu_buffers.h (no page faults
// on the memory of the previous step's outputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <torch/library.h>

#include "core/checks.h"
#include "core/cpu_buffers.h"
#include "core/tensor_utils.h"
#include "permute/math.h"
#include "permute/ops.h"

namespace pesc {
namespace {

// Tokens per parallel task: about 64K row elements, so small d still amortises scheduling.
int64_t token_grain(int64_t d, int64_t k) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, d * k)); }

// The row as fp32: the row itself for float, else widened into `buffer`.
template <typename scalar_t>
const float* row_fp32(const scalar_t* row, int64_t d, std::vector<float>& buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return row;
  } else {
    buffer.resize(d);
    for (int64_t i = 0; i < d; ++i) buffer[i] = static_cast<float>(row[i]);
    return buffer.data();
  }
}

// <a, b> in fp32 over kLanes interleaved partial sums added in a fixed order: vectorisable, and the
// same bits for the same inputs on any number of threads.
float dot_fp32(const float* a, const float* b, int64_t n) {
  constexpr int64_t kLanes = 16;
  float partial[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) partial[l] += a[i + l] * b[i + l];
  for (int64_t l = 0; i + l < n; ++l) partial[l] += a[i + l] * b[i + l];
  float sum = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) sum += partial[l];
  return sum;
}

struct ScatterArgs {
  const int32_t* row_map;  // [T, k]
  const float* weights;    // [T, k] or nullptr (w = 1)
  int64_t T, k, d;
  float* grad_weights;  // [T, k] <src[t], y_perm[row_map[t,j]]>, or nullptr (then y_perm is unused)
};

template <typename scalar_t>
void scatter_rows(const scalar_t* src, const scalar_t* y_perm, const ScatterArgs& a, scalar_t* dst) {
  const int64_t k = a.k, d = a.d;
  at::parallel_for(0, a.T, token_grain(d, k), [&](int64_t begin, int64_t end) {
    std::vector<float> src_buffer, y_buffer;
    for (int64_t t = begin; t < end; ++t) {
      const int32_t* rows = a.row_map + t * k;
      for (int64_t j = 0; j < k; ++j) {  // dropped slots: a zero row and a zero weight gradient
        if (!is_dropped_entry(rows[j])) continue;
        std::fill(dst + int64_t{decoded_row(rows[j])} * d, dst + int64_t{decoded_row(rows[j])} * d + d, scalar_t(0));
        if (a.grad_weights != nullptr) a.grad_weights[t * k + j] = 0.f;
      }
      if (a.weights == nullptr && a.grad_weights == nullptr) {  // a pure permutation: copy bytes
        for (int64_t j = 0; j < k; ++j)
          if (!is_dropped_entry(rows[j])) std::memcpy(dst + rows[j] * d, src + t * d, d * sizeof(scalar_t));
        continue;
      }
      const float* g = row_fp32(src + t * d, d, src_buffer);
      for (int64_t j = 0; j < k; ++j) {
        if (is_dropped_entry(rows[j])) continue;
        const float w = a.weights == nullptr ? 1.f : a.weights[t * k + j];
        scalar_t* out = dst + rows[j] * d;
        for (int64_t i = 0; i < d; ++i) out[i] = static_cast<scalar_t>(w * g[i]);
        if (a.grad_weights != nullptr)
          a.grad_weights[t * k + j] = dot_fp32(g, row_fp32(y_perm + rows[j] * d, d, y_buffer), d);
      }
    }
  });
}

template <typename scalar_t>
void gather_rows(const scalar_t* src, const int32_t* row_map, const float* weights, const scalar_t* residual, int64_t T,
                 int64_t k, int64_t d, scalar_t* out) {
  at::parallel_for(0, T, token_grain(d, k), [&](int64_t begin, int64_t end) {
    std::vector<float> acc(d);
    for (int64_t t = begin; t < end; ++t) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < k; ++j) {
        if (is_dropped_entry(row_map[t * k + j])) continue;
        const float w = weights == nullptr ? 1.f : weights[t * k + j];
        const scalar_t* row = src + row_map[t * k + j] * d;
        for (int64_t i = 0; i < d; ++i) acc[i] = combine_term(acc[i], w, static_cast<float>(row[i]));
      }
      if (residual != nullptr)
        for (int64_t i = 0; i < d; ++i) acc[i] += static_cast<float>(residual[t * d + i]);
      for (int64_t i = 0; i < d; ++i) out[t * d + i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

// The sort bucket of every slot: its expert id, or E for a dropped slot; raises for an id outside
// [0, E) unless drop_invalid.
template <typename Id>
std::vector<uint32_t> slot_buckets(const at::Tensor& indices, int32_t E, bool drop_invalid) {
  const Id* ids = indices.data_ptr<Id>();
  const int64_t n = indices.numel(), k = indices.size(1);
  std::vector<uint32_t> buckets(n);
  for (int64_t s = 0; s < n; ++s) {
    const Id id = ids[s];
    TORCH_CHECK_INDEX(drop_invalid || (id >= 0 && id < E), "pesc.permute: indices holds expert id ", id, " at [", s / k,
                      ", ", s % k, "], outside [0, num_experts=", E, ")");
    buckets[s] = expert_bucket_dropping(id, E);
  }
  return buckets;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_cpu(const at::Tensor& x_in, const at::Tensor& indices_in,
                                                           int64_t num_experts, bool drop_invalid) {
  auto [x_perm, row_map, offsets] = permute_outputs(x_in, indices_in, num_experts, drop_invalid);
  x_perm = reusable_like(x_perm);
  const at::Tensor x = x_in.contiguous(), indices = indices_in.contiguous();
  const int64_t T = x.size(0), d = x.size(1), k = indices.size(1), N = T * k;
  const int32_t E = static_cast<int32_t>(num_experts);
  const std::vector<uint32_t> buckets = indices.scalar_type() == at::kLong
                                            ? slot_buckets<int64_t>(indices, E, drop_invalid)
                                            : slot_buckets<int32_t>(indices, E, drop_invalid);

  // Stable counting sort over E + 1 buckets (the last holds dropped slots): histogram, exclusive
  // scan, then slots in (t, j) order take the next row of their bucket.
  std::vector<int64_t> start(E + 2, 0);
  for (int64_t s = 0; s < N; ++s) ++start[buckets[s] + 1];
  for (int32_t e = 0; e <= E; ++e) start[e + 1] += start[e];
  std::copy(start.begin(), start.begin() + E + 1, offsets.data_ptr<int64_t>());
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  int32_t* rows = row_map.data_ptr<int32_t>();
  for (int64_t s = 0; s < N; ++s) {
    const int32_t row = static_cast<int32_t>(next[buckets[s]]++);
    rows[s] = buckets[s] == static_cast<uint32_t>(E) ? dropped_row_entry(row) : row;
  }

  PESC_DTYPE_SWITCH(dtype_of(x), HostTypes, [&] {
    scatter_rows<scalar_t>(x.data_ptr<scalar_t>(), nullptr, {rows, nullptr, T, k, d, nullptr},
                           x_perm.data_ptr<scalar_t>());
  });
  return {x_perm, row_map, offsets};
}

at::Tensor unpermute_cpu(const at::Tensor& y_perm_in, const at::Tensor& row_map_in,
                         const std::optional<at::Tensor>& weights_in, const std::optional<at::Tensor>& residual_in) {
  at::Tensor y = reusable_like(unpermute_outputs(y_perm_in, row_map_in, weights_in, residual_in));
  check_row_map_cpu("pesc.unpermute", row_map_in);
  const at::Tensor y_perm = y_perm_in.contiguous(), row_map = row_map_in.contiguous();
  const auto weights = weights_fp32(weights_in), residual = contiguous_optional(residual_in);
  const int64_t T = row_map.size(0), k = row_map.size(1), d = y_perm.size(1);
  PESC_DTYPE_SWITCH(dtype_of(y_perm), HostTypes, [&] {
    gather_rows<scalar_t>(y_perm.data_ptr<scalar_t>(), row_map.data_ptr<int32_t>(), optional_data<float>(weights),
                          optional_data<scalar_t>(residual), T, k, d, y.data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& row_map_in,
                                                          const std::optional<at::Tensor>& weights_in,
                                                          const std::optional<at::Tensor>& y_perm_in) {
  auto [grad_y_perm, grad_weights] = unpermute_backward_outputs(grad_y_in, row_map_in, weights_in, y_perm_in);
  grad_y_perm = reusable_like(grad_y_perm);
  check_row_map_cpu("pesc.unpermute_backward", row_map_in);
  const at::Tensor grad_y = grad_y_in.contiguous(), row_map = row_map_in.contiguous();
  const auto weights = weights_fp32(weights_in), y_perm = contiguous_optional(y_perm_in);
  const int64_t T = row_map.size(0), k = row_map.size(1), d = grad_y.size(1);
  // The dot products accumulate in fp32; they are rounded once to the weights' dtype.
  at::Tensor grad_weights_fp32 = y_perm.has_value() && grad_weights.scalar_type() != at::kFloat
                                     ? at::empty_like(grad_weights, at::kFloat)
                                     : grad_weights;
  PESC_DTYPE_SWITCH(dtype_of(grad_y), HostTypes, [&] {
    const ScatterArgs args{row_map.data_ptr<int32_t>(),
                           optional_data<float>(weights),
                           T,
                           k,
                           d,
                           y_perm.has_value() ? grad_weights_fp32.data_ptr<float>() : nullptr};
    scatter_rows<scalar_t>(grad_y.data_ptr<scalar_t>(), optional_data<scalar_t>(y_perm), args,
                           grad_y_perm.data_ptr<scalar_t>());
  });
  if (!grad_weights_fp32.is_same(grad_weights)) grad_weights.copy_(grad_weights_fp32);
  return {grad_y_perm, grad_weights};
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("permute", &pesc::permute_cpu);
  m.impl("unpermute", &pesc::unpermute_cpu);
  m.impl("unpermute_backward", &pesc::unpermute_backward_cpu);
}

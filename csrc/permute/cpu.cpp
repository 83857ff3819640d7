// CPU kernels for the permutation ops (docs/design.md, "Permutation").
//
//   permute(x[T,d], indices[T,k], E) -> x_perm[N,d], row_map[T,k] int32, expert_offsets[E+1] int64
//   unpermute(y_perm[N,d], row_map, weights[T,k] fp32?, residual[T,d]?) -> y[T,d]
//   unpermute_backward(grad_y[T,d], row_map, weights?, y_perm?) -> grad_y_perm[N,d], grad_weights[T,k] fp32
// N = T*k; x, y_perm, residual and grad_y share one dtype (fp32/fp16/bf16).
//
// The ops reduce to two row kernels that are each other's adjoint, both parallel over tokens so every
// output row has exactly one writer (no atomics, results independent of the thread count):
//   scatter_rows: dst[row_map[t,j]] = w[t,j] * src[t] (and optionally the dot <src[t], y_perm[row]>);
//                 permute's forward (w = 1: a plain memcpy per row) and unpermute's backward.
//   gather_rows:  out[t] = residual[t] + sum_j w[t,j] * src[row_map[t,j]] in fp32;
//                 unpermute's forward and, with no weights or residual, permute's backward.
// The counting sort itself is a serial pass over the N int32 ids: it is tiny next to the row copies.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <torch/library.h>

#include "core/checks.h"
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
      if (a.weights == nullptr && a.grad_weights == nullptr) {  // a pure permutation: copy bytes
        for (int64_t j = 0; j < k; ++j) std::memcpy(dst + rows[j] * d, src + t * d, d * sizeof(scalar_t));
        continue;
      }
      const float* g = row_fp32(src + t * d, d, src_buffer);
      for (int64_t j = 0; j < k; ++j) {
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_cpu(const at::Tensor& x_in, const at::Tensor& indices_in,
                                                           int64_t num_experts) {
  auto [x_perm, row_map, offsets] = permute_outputs(x_in, indices_in, num_experts);
  check_expert_ids_cpu("pesc.permute", indices_in, num_experts, "indices");
  const at::Tensor x = x_in.contiguous(), indices = indices_in.contiguous();
  const int64_t T = x.size(0), d = x.size(1), k = indices.size(1), N = T * k;
  const int32_t E = static_cast<int32_t>(num_experts);

  // Stable counting sort: histogram, exclusive scan, then slots in (t, j) order take the next row
  // of their expert.
  const int32_t* ids = indices.data_ptr<int32_t>();
  int64_t* off = offsets.data_ptr<int64_t>();
  std::fill(off, off + E + 1, 0);
  for (int64_t s = 0; s < N; ++s) ++off[expert_sort_key(ids[s], E) + 1];
  for (int32_t e = 0; e < E; ++e) off[e + 1] += off[e];
  std::vector<int64_t> next(off, off + E);
  int32_t* rows = row_map.data_ptr<int32_t>();
  for (int64_t s = 0; s < N; ++s) rows[s] = static_cast<int32_t>(next[expert_sort_key(ids[s], E)]++);

  PESC_DTYPE_SWITCH(dtype_of(x), HostTypes, [&] {
    scatter_rows<scalar_t>(x.data_ptr<scalar_t>(), nullptr, {rows, nullptr, T, k, d, nullptr},
                           x_perm.data_ptr<scalar_t>());
  });
  return {x_perm, row_map, offsets};
}

at::Tensor unpermute_cpu(const at::Tensor& y_perm_in, const at::Tensor& row_map_in,
                         const std::optional<at::Tensor>& weights_in, const std::optional<at::Tensor>& residual_in) {
  at::Tensor y = unpermute_outputs(y_perm_in, row_map_in, weights_in, residual_in);
  check_row_map_cpu("pesc.unpermute", row_map_in);
  const at::Tensor y_perm = y_perm_in.contiguous(), row_map = row_map_in.contiguous();
  const auto weights = contiguous_optional(weights_in), residual = contiguous_optional(residual_in);
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
  check_row_map_cpu("pesc.unpermute_backward", row_map_in);
  const at::Tensor grad_y = grad_y_in.contiguous(), row_map = row_map_in.contiguous();
  const auto weights = contiguous_optional(weights_in), y_perm = contiguous_optional(y_perm_in);
  const int64_t T = row_map.size(0), k = row_map.size(1), d = grad_y.size(1);
  PESC_DTYPE_SWITCH(dtype_of(grad_y), HostTypes, [&] {
    const ScatterArgs args{row_map.data_ptr<int32_t>(),
                           optional_data<float>(weights),
                           T,
                           k,
                           d,
                           y_perm.has_value() ? grad_weights.data_ptr<float>() : nullptr};
    scatter_rows<scalar_t>(grad_y.data_ptr<scalar_t>(), optional_data<scalar_t>(y_perm), args,
                           grad_y_perm.data_ptr<scalar_t>());
  });
  return {grad_y_perm, grad_weights};
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("permute", &pesc::permute_cpu);
  m.impl("unpermute", &pesc::unpermute_cpu);
  m.impl("unpermute_backward", &pesc::unpermute_backward_cpu);
}

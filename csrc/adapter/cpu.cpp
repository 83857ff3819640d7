// CPU kernels of the grouped GEMMs on expert segments (docs/design.md, "Grouped GEMMs"), on torch's BLAS.
//
//   grouped_mm: y[seg e] = x[seg e] @ w[e]                  x [N, K], w [E, K, M], y [N, M]
//   adapter:    h[seg e] = x[seg e] @ w_down[e]             x [N, d], w_down [E, d, r], h [N, r]
//               y[seg e] = (scaling * act(h[seg e])) @ w_up[e]          w_up [E, r, d], y [N, d]
//   backward:   dA = dy @ w_up[e]^T,  dh = scaling * act'(h) * dA,  dx = dh @ w_down[e]^T,
//               dw_up[e] = (scaling * act(h))[seg]^T @ dy[seg],  dw_down[e] = x[seg]^T @ dh[seg]
// Segment e is rows expert_offsets[e] .. expert_offsets[e+1]; all tensors row-major, in x's dtype
// (fp32/fp16/bf16; BLAS accumulates in fp32, the activation math runs in fp32 through the helpers
// of adapter/activations.h, which the CUDA kernels run too).
//
// Work is cut into pieces whose shapes depend only on the problem (never on the thread count):
//   row pieces     (expert, rows [b, b + rows_per_piece)) for the products that write rows,
//   weight pieces  (expert, a block of kWeightBlock output columns of a weight gradient), each
//                  reducing over the whole segment in one GEMM, so no partial sums or atomics.
// Each piece is one single-threaded BLAS call on contiguous or simply-strided views (no copies);
// pieces are dealt to the threads by estimated cost, so experts run in parallel when segments are
// small and large segments split into several pieces. The adapter applies activation and scaling
// to a row piece's [rows, r] block between its two GEMMs, while it is in cache, and computes both
// weight gradients in one parallel region.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include <torch/library.h>

#include "adapter/activations.h"
#include "adapter/ops.h"
#include "core/tensor_utils.h"

namespace pesc {
namespace {

// Rows per row piece. fp32 BLAS is about as fast at 256 rows as at 4096 on one core, while the
// bf16/fp16 paths (oneDNN) want longer panels.
int64_t rows_per_piece(const at::Tensor& x) { return x.scalar_type() == at::kFloat ? 256 : 1024; }
// Output columns of a weight gradient per weight piece.
constexpr int64_t kWeightBlock = 256;

// A unit of work: rows [begin, end) of expert `expert` (row pieces), or columns [begin, end) of
// expert `expert`'s block of weight gradient number `product` (weight pieces).
struct Piece {
  int64_t expert;
  int64_t begin;
  int64_t end;
  int product = 0;
  int64_t size() const { return end - begin; }
};

std::vector<int64_t> read_offsets(const at::Tensor& expert_offsets) {
  const at::Tensor o = expert_offsets.contiguous();
  return std::vector<int64_t>(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel());
}

int64_t segment_rows(const std::vector<int64_t>& offsets, int64_t e) { return offsets[e + 1] - offsets[e]; }

std::vector<Piece> row_pieces(const std::vector<int64_t>& offsets, int64_t rows) {
  std::vector<Piece> pieces;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    for (int64_t b = offsets[e]; b < offsets[e + 1]; b += rows)
      pieces.push_back({static_cast<int64_t>(e), b, std::min(b + rows, offsets[e + 1])});
  }
  return pieces;
}

// Runs fn(piece) for every piece in parallel. Pieces are dealt to the threads largest first, each to
// the least loaded thread (cost(piece) estimates its work), so threads finish together even when
// segments differ in size; which thread runs a piece never changes what the piece computes.
// Worker threads do not inherit the caller's dispatch state, so each excludes autograd itself: the
// views and out= GEMMs below are plain kernel calls.
template <typename Cost, typename Fn>
void for_each_piece(const std::vector<Piece>& pieces, const Cost& cost, const Fn& fn) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), pieces.size()));
  std::vector<size_t> order(pieces.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost(pieces[a]) > cost(pieces[b]); });
  std::vector<std::vector<size_t>> buckets(threads);
  std::vector<double> load(threads, 0.0);
  for (const size_t i : order) {
    const auto t = std::min_element(load.begin(), load.end()) - load.begin();
    buckets[t].push_back(i);
    load[t] += static_cast<double>(cost(pieces[i]));
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t t = begin; t < end; ++t)
      for (const size_t i : buckets[t]) fn(pieces[i]);
  });
}

template <typename Fn>
void for_each_row_piece(const std::vector<Piece>& pieces, const Fn& fn) {
  for_each_piece(pieces, [](const Piece& p) { return p.size(); }, fn);
}

// out = a @ b into a view of a larger output (mm_out writes a view of the right shape in place).
void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

at::Tensor rows(const at::Tensor& t, const Piece& p) { return t.narrow(0, p.begin, p.size()); }
at::Tensor segment(const at::Tensor& t, const std::vector<int64_t>& offsets, int64_t e) {
  return t.narrow(0, offsets[e], segment_rows(offsets, e));
}

// grad[e] = a[seg e]^T @ b[seg e] for every expert: a [N, K], b [N, M], grad [E, K, M].
struct WeightGrad {
  at::Tensor grad;
  at::Tensor a;
  at::Tensor b;
};

// Computes several weight gradients in one parallel region. A piece is a block of output columns of
// one expert: b's columns are then a strided view BLAS reads directly, while a (the larger operand,
// x in the adapter) is read as whole contiguous rows. Empty experts get zeros.
void weight_grads(const std::vector<WeightGrad>& products, const std::vector<int64_t>& offsets) {
  std::vector<Piece> pieces;
  for (size_t k = 0; k < products.size(); ++k) {
    const int64_t E = products[k].grad.size(0), M = products[k].grad.size(2);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t b = 0; b < std::max<int64_t>(M, 1); b += kWeightBlock)
        pieces.push_back({e, b, std::min(b + kWeightBlock, M), static_cast<int>(k)});
  }
  const auto cost = [&](const Piece& p) {
    const int64_t K = products[p.product].grad.size(1);
    return std::max<int64_t>(segment_rows(offsets, p.expert), 1) * std::max<int64_t>(K, 1) * p.size();
  };
  for_each_piece(pieces, cost, [&](const Piece& p) {
    const WeightGrad& w = products[p.product];
    at::Tensor out = w.grad.select(0, p.expert).narrow(1, p.begin, p.size());
    if (segment_rows(offsets, p.expert) == 0) {
      out.zero_();
      return;
    }
    mm_into(out, segment(w.a, offsets, p.expert).t(), segment(w.b, offsets, p.expert).narrow(1, p.begin, p.size()));
  });
}

// Runs loop(kind, h_rows, out_rows, n) over one row piece of two [N, r] buffers of the same dtype, with
// the activation kind a compile-time constant (no per-element switch in the loop).
template <typename Loop>
void activation_rows(const at::Tensor& h, const at::Tensor& out, const Piece& p, Activation act, const Loop& loop) {
  const int64_t r = h.size(1);
  PESC_DTYPE_SWITCH(dtype_of(h), HostTypes, [&] {
    const scalar_t* src = h.data_ptr<scalar_t>() + p.begin * r;
    scalar_t* dst = out.data_ptr<scalar_t>() + p.begin * r;
    with_activation(act, [&](auto kind) { loop(kind, src, dst, p.size() * r); });
  });
}

// a = scaling * act(h) for one row piece.
void scaled_activation_rows(const at::Tensor& h, const at::Tensor& a, const Piece& p, Activation act, float scaling) {
  activation_rows(h, a, p, act, [scaling](auto kind, const auto* h_rows, auto* a_rows, int64_t n) {
    using scalar_t = std::remove_pointer_t<decltype(a_rows)>;
    for (int64_t i = 0; i < n; ++i)
      a_rows[i] = scalar_t(scaling * activation_forward<decltype(kind)::value>(static_cast<float>(h_rows[i])));
  });
}

// g = scaling * act'(h) * g in place for one row piece (dA becomes dh).
void activation_grad_rows(const at::Tensor& h, const at::Tensor& g, const Piece& p, Activation act, float scaling) {
  activation_rows(h, g, p, act, [scaling](auto kind, const auto* h_rows, auto* g_rows, int64_t n) {
    using scalar_t = std::remove_pointer_t<decltype(g_rows)>;
    for (int64_t i = 0; i < n; ++i)
      g_rows[i] = scalar_t(scaling * activation_derivative<decltype(kind)::value>(static_cast<float>(h_rows[i])) *
                           static_cast<float>(g_rows[i]));
  });
}

// The activation buffer a = scaling * act(h) aliases h when that is the identity map.
bool activation_is_identity(Activation act, double scaling) { return act == Activation::Identity && scaling == 1.0; }

at::Tensor grouped_mm_cpu(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& expert_offsets) {
  at::Tensor y = grouped_mm_outputs(x_in, w_in, expert_offsets);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  for_each_row_piece(row_pieces(offsets, rows_per_piece(x)),
                     [&](const Piece& p) { mm_into(rows(y, p), rows(x, p), w.select(0, p.expert)); });
  return y;
}

std::tuple<at::Tensor, at::Tensor> grouped_mm_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                           const at::Tensor& w_in, const at::Tensor& expert_offsets,
                                                           std::array<bool, 2> output_mask) {
  auto [grad_x, grad_w] = grouped_mm_backward_outputs(grad_y_in, x_in, w_in, expert_offsets, output_mask);
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  if (output_mask[0]) {
    for_each_row_piece(row_pieces(offsets, rows_per_piece(x)),
                       [&](const Piece& p) { mm_into(rows(grad_x, p), rows(grad_y, p), w.select(0, p.expert).t()); });
  }
  if (output_mask[1]) weight_grads({{grad_w, x, grad_y}}, offsets);
  return {grad_x, grad_w};
}

std::tuple<at::Tensor, at::Tensor> adapter_cpu(const at::Tensor& x_in, const at::Tensor& w_down_in,
                                               const at::Tensor& w_up_in, const at::Tensor& expert_offsets,
                                               std::string_view activation, double scaling) {
  auto [y, h] = adapter_outputs(x_in, w_down_in, w_up_in, expert_offsets, activation, scaling);
  const Activation act = parse_activation("pesc.adapter", activation);
  const at::Tensor x = x_in.contiguous(), w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  at::Tensor a = activation_is_identity(act, scaling) ? h : at::empty_like(h);
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  for_each_row_piece(row_pieces(offsets, rows_per_piece(x)), [&](const Piece& p) {
    mm_into(rows(h, p), rows(x, p), w_down.select(0, p.expert));
    if (!a.is_same(h)) scaled_activation_rows(h, a, p, act, static_cast<float>(scaling));
    mm_into(rows(y, p), rows(a, p), w_up.select(0, p.expert));
  });
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                                    const at::Tensor& w_down_in,
                                                                    const at::Tensor& w_up_in,
                                                                    const at::Tensor& expert_offsets,
                                                                    const at::Tensor& h_in, std::string_view activation,
                                                                    double scaling, std::array<bool, 3> output_mask) {
  auto [grad_x, grad_down, grad_up] = adapter_backward_outputs(grad_y_in, x_in, w_down_in, w_up_in, expert_offsets,
                                                               h_in, activation, scaling, output_mask);
  const Activation act = parse_activation("pesc.adapter_backward", activation);
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), h = h_in.contiguous();
  const at::Tensor w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  const auto [need_x, need_down, need_up] = output_mask;
  const bool need_dh = need_x || need_down;
  const float s = static_cast<float>(scaling);
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  at::Tensor dh = need_dh ? at::empty_like(h) : at::Tensor();
  at::Tensor a = need_up && !activation_is_identity(act, scaling) ? at::empty_like(h) : h;
  // Row pieces: dA = dy @ w_up^T becomes dh in place, then dx = dh @ w_down^T; a = s * act(h) for dw_up.
  if (need_dh || !a.is_same(h)) {
    for_each_row_piece(row_pieces(offsets, rows_per_piece(x)), [&](const Piece& p) {
      if (!a.is_same(h)) scaled_activation_rows(h, a, p, act, s);
      if (!need_dh) return;
      mm_into(rows(dh, p), rows(grad_y, p), w_up.select(0, p.expert).t());
      activation_grad_rows(h, dh, p, act, s);
      if (need_x) mm_into(rows(grad_x, p), rows(dh, p), w_down.select(0, p.expert).t());
    });
  }
  std::vector<WeightGrad> products;
  if (need_down) products.push_back({grad_down, x, dh});
  if (need_up) products.push_back({grad_up, a, grad_y});
  weight_grads(products, offsets);
  return {grad_x, grad_down, grad_up};
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("grouped_mm", &pesc::grouped_mm_cpu);
  m.impl("grouped_mm_backward", &pesc::grouped_mm_backward_cpu);
  m.impl("adapter", &pesc::adapter_cpu);
  m.impl("adapter_backward", &pesc::adapter_backward_cpu);
}

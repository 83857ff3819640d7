// CPU kernels of the grouped GEMMs on expert segments and the gated activation (docs/design.md,
// "Grouped GEMMs"), on torch's BLAS.
//
//   grouped_mm: y[seg e] = x[seg e] @ W_e + bias[e]         x [N, K], y [N, M], bias [E, M]
//               W_e = w[e] (w [E, K, M]) or w[e]^T (w [E, M, K], w_transposed: a transposed view, no copy)
//     backward: dx[seg e] = dy[seg e] @ W_e^T, dW_e = x[seg]^T @ dy[seg] (stored as w is),
//               dbias[e] = sum of dy over the segment's rows (fp32, rows in order)
//   adapter:    h[seg e] = x[seg e] @ w_down[e]             x [N, d], w_down [E, d, r], h [N, r]
//               y[seg e] = (scaling * act(h[seg e])) @ w_up[e]          w_up [E, r, d], y [N, d]
//   backward:   dA = dy @ w_up[e]^T,  dh = scaling * act'(h) * dA,  dx = dh @ w_down[e]^T,
//               dw_up[e] = (scaling * act(h))[seg]^T @ dy[seg],  dw_down[e] = x[seg]^T @ dh[seg]
//   gated_activation: a[n, f] = gated(h[n, gate col], h[n, up col]) and its backward (adapter/gated.h)
// Segment e is rows expert_offsets[e] .. expert_offsets[e+1]; rows from expert_offsets[E] to N belong
// to no expert (dropped slots) and are zero in every [N, *] output. All tensors row-major, in x's
// dtype (fp32/fp16/bf16; BLAS accumulates in fp32, the activation math runs in fp32 through the
// helpers of adapter/activations.h and adapter/gated.h, which the CUDA kernels run too).
//
// Work is cut into pieces whose shapes depend only on the problem (never on the thread count):
//   row pieces     (expert, rows [b, b + rows_per_piece)) for the products that write rows,
//   weight pieces  (expert, a block of weight_block output columns of a weight gradient), each
//                  reducing over the whole segment in one GEMM, so no partial sums or atomics.
// Each piece is one single-threaded BLAS call on contiguous or simply-strided views (no copies);
// the threads take pieces from a shared queue ordered largest first, so experts run in parallel
// when segments are small, large segments split into several pieces, and a thread slowed down by
// other work on the machine simply takes fewer pieces. Which thread runs a piece never changes
// what it computes, so results do not depend on the thread count. The adapter applies activation
// and scaling to a row piece's [rows, r] block between its two GEMMs, while it is in cache, and
// computes both weight gradients in one parallel region.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include <torch/library.h>

#include "adapter/activations.h"
#include "adapter/gated.h"
#include "adapter/ops.h"
#include "core/cpu_buffers.h"
#include "core/tensor_utils.h"

namespace pesc {
namespace {

// Rows per row piece: long enough that BLAS amortises packing the expert's weight (a 256-row
// piece ran 3-25% slower than a whole segment of 512-1024 rows on one core), short enough that a
// large segment still splits across threads.
constexpr int64_t kRowsPerPiece = 1024;
// Output columns per weight piece: a whole gradient row per expert (blocks cost 5-10%: each one
// repacks the shared operand) unless there are fewer than 16 experts, then about 16 / E blocks,
// so small E still gives every thread pieces. Depends on the problem only, never the thread count.
int64_t weight_block(int64_t E, int64_t M) {
  const int64_t blocks = ceil_div(16, std::max<int64_t>(E, 1));
  return std::max<int64_t>(64, ceil_div(ceil_div(M, blocks), 64) * 64);
}

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

// Runs fn(piece) for every piece in parallel. The threads take pieces from one queue ordered by
// decreasing cost(piece) (an estimate of its work), so they finish together even when segments
// differ in size or a thread is slowed down; which thread runs a piece never changes what the
// piece computes. Worker threads do not inherit the caller's dispatch state, so each excludes
// autograd itself: the views and out= GEMMs below are plain kernel calls.
template <typename Cost, typename Fn>
void for_each_piece(const std::vector<Piece>& pieces, const Cost& cost, const Fn& fn) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), pieces.size()));
  std::vector<size_t> order(pieces.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost(pieces[a]) > cost(pieces[b]); });
  std::atomic<size_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (size_t i = next.fetch_add(1); i < order.size(); i = next.fetch_add(1)) fn(pieces[order[i]]);
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
    const int64_t E = products[k].grad.size(0), M = products[k].grad.size(2), block = weight_block(E, M);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t b = 0; b < std::max<int64_t>(M, 1); b += block)
        pieces.push_back({e, b, std::min(b + block, M), static_cast<int>(k)});
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

// fp32 gelu, gelu_tanh and silu run through torch's own elementwise kernels on the piece's block:
// those are vectorised for the CPU's widest instruction set (AVX2/AVX-512), which this extension,
// built for the baseline ISA, cannot assume; erf and exp in a scalar loop cost as much as the
// piece's GEMMs at r = 512. The other activations and dtypes take the shared helpers of
// adapter/activations.h, whose single fp32 rounding fp16/bf16 need.
bool uses_torch_activation(const at::Tensor& h, Activation act) {
  return h.scalar_type() == at::kFloat &&
         (act == Activation::Gelu || act == Activation::GeluTanh || act == Activation::Silu);
}

// a = scaling * act(h) for one row piece.
void scaled_activation_rows(const at::Tensor& h, const at::Tensor& a, const Piece& p, Activation act, float scaling) {
  if (uses_torch_activation(h, act)) {
    at::Tensor out = rows(a, p);
    if (act == Activation::Silu) {
      at::silu_out(out, rows(h, p));
    } else {
      at::gelu_out(out, rows(h, p), act == Activation::Gelu ? "none" : "tanh");
    }
    if (scaling != 1.f) out.mul_(scaling);
    return;
  }
  activation_rows(h, a, p, act, [scaling](auto kind, const auto* h_rows, auto* a_rows, int64_t n) {
    using scalar_t = std::remove_pointer_t<decltype(a_rows)>;
    for (int64_t i = 0; i < n; ++i)
      a_rows[i] = scalar_t(scaling * activation_forward<decltype(kind)::value>(static_cast<float>(h_rows[i])));
  });
}

// g = scaling * act'(h) * g in place for one row piece (dA becomes dh).
void activation_grad_rows(const at::Tensor& h, const at::Tensor& g, const Piece& p, Activation act, float scaling) {
  if (uses_torch_activation(h, act)) {
    at::Tensor grad = rows(g, p);
    if (act == Activation::Silu) {
      at::silu_backward_out(grad, grad, rows(h, p));
    } else {
      at::gelu_backward_out(grad, grad, rows(h, p), act == Activation::Gelu ? "none" : "tanh");
    }
    if (scaling != 1.f) grad.mul_(scaling);
    return;
  }
  activation_rows(h, g, p, act, [scaling](auto kind, const auto* h_rows, auto* g_rows, int64_t n) {
    using scalar_t = std::remove_pointer_t<decltype(g_rows)>;
    for (int64_t i = 0; i < n; ++i)
      g_rows[i] = scalar_t(scaling * activation_derivative<decltype(kind)::value>(static_cast<float>(h_rows[i])) *
                           static_cast<float>(g_rows[i]));
  });
}

// The activation buffer a = scaling * act(h) aliases h when that is the identity map.
bool activation_is_identity(Activation act, double scaling) { return act == Activation::Identity && scaling == 1.0; }

// Rows offsets[E] .. N belong to no expert (dropped slots): zero in every [N, *] output.
void zero_dropped_rows(at::Tensor& t, const std::vector<int64_t>& offsets) {
  const int64_t kept = offsets.back();
  if (t.defined() && t.dim() == 2 && kept < t.size(0)) t.narrow(0, kept, t.size(0) - kept).zero_();
}

// W_e as the [K, M] operand of y = x @ W_e: w[e], or the transposed view of w[e] when w is [E, M, K].
at::Tensor expert_weight(const at::Tensor& w, int64_t e, bool w_transposed) {
  const at::Tensor we = w.select(0, e);
  return w_transposed ? we.t() : we;
}

// grad_bias[e, c] = sum over the rows of segment e of grad_y[row, c], in fp32 and row order; pieces
// are (expert, block of weight_block columns). Empty experts get zeros.
void bias_grad(const at::Tensor& grad_y, const std::vector<int64_t>& offsets, at::Tensor& grad_bias) {
  const int64_t E = grad_bias.size(0), M = grad_bias.size(1);
  std::vector<Piece> pieces;
  const int64_t block = weight_block(E, M);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t b = 0; b < M; b += block) pieces.push_back({e, b, std::min(b + block, M)});
  const auto cost = [&](const Piece& p) { return (segment_rows(offsets, p.expert) + 1) * p.size(); };
  PESC_DTYPE_SWITCH(dtype_of(grad_y), HostTypes, [&] {
    const scalar_t* dy = grad_y.data_ptr<scalar_t>();
    scalar_t* out = grad_bias.data_ptr<scalar_t>();
    for_each_piece(pieces, cost, [&](const Piece& p) {
      std::vector<float> acc(p.size(), 0.f);
      for (int64_t row = offsets[p.expert]; row < offsets[p.expert + 1]; ++row) {
        const scalar_t* line = dy + row * M + p.begin;
        for (int64_t c = 0; c < p.size(); ++c) acc[c] += static_cast<float>(line[c]);
      }
      for (int64_t c = 0; c < p.size(); ++c) out[p.expert * M + p.begin + c] = static_cast<scalar_t>(acc[c]);
    });
  });
}

at::Tensor grouped_mm_cpu(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& expert_offsets,
                          const std::optional<at::Tensor>& bias_in, bool w_transposed) {
  at::Tensor y = reusable_like(grouped_mm_outputs(x_in, w_in, expert_offsets, bias_in, w_transposed));
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const auto bias = contiguous_optional(bias_in);
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  for_each_row_piece(row_pieces(offsets, kRowsPerPiece), [&](const Piece& p) {
    at::Tensor out = rows(y, p);
    const at::Tensor we = expert_weight(w, p.expert, w_transposed);
    if (bias.has_value()) {
      at::addmm_out(out, bias->select(0, p.expert), rows(x, p), we);  // out = bias[e] + x @ W_e
    } else {
      mm_into(out, rows(x, p), we);
    }
  });
  zero_dropped_rows(y, offsets);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_mm_backward_cpu(const at::Tensor& grad_y_in,
                                                                       const at::Tensor& x_in, const at::Tensor& w_in,
                                                                       const at::Tensor& expert_offsets,
                                                                       bool w_transposed,
                                                                       std::array<bool, 3> output_mask) {
  auto [grad_x, grad_w, grad_bias] =
      reusable(grouped_mm_backward_outputs(grad_y_in, x_in, w_in, expert_offsets, w_transposed, output_mask));
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  if (output_mask[0]) {
    for_each_row_piece(row_pieces(offsets, kRowsPerPiece), [&](const Piece& p) {
      mm_into(rows(grad_x, p), rows(grad_y, p), expert_weight(w, p.expert, w_transposed).t());
    });
    zero_dropped_rows(grad_x, offsets);
  }
  // dW_e = x[seg]^T @ dy[seg] ([K, M]); with w [E, M, K] its transpose dy[seg]^T @ x[seg] is stored.
  if (output_mask[1])
    weight_grads({w_transposed ? WeightGrad{grad_w, grad_y, x} : WeightGrad{grad_w, x, grad_y}}, offsets);
  if (output_mask[2]) bias_grad(grad_y, offsets, grad_bias);
  return {grad_x, grad_w, grad_bias};
}

// Runs rows(kind, interleaved, type_tag, begin, end) over the rows of h [N, 2F] in parallel, with
// the gated kind and the layout compile-time constants (the loops over a row then vectorise) and
// type_tag a null scalar_t* naming the storage type. Each row of the output has one writer.
template <typename Rows>
void for_each_gated_rows(const at::Tensor& h, int64_t F, const GatedKind& kind, bool interleaved, const Rows& rows) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(F, 1));
  PESC_DTYPE_SWITCH(dtype_of(h), HostTypes, [&] {
    PESC_BOOL_SWITCH(interleaved, INTERLEAVED, [&] {
      with_gated_kind(kind, [&](auto k) {
        at::parallel_for(0, h.size(0), grain, [&](int64_t begin, int64_t end) {
          rows(k, std::integral_constant<bool, INTERLEAVED>{}, static_cast<scalar_t*>(nullptr), begin, end);
        });
      });
    });
  });
}

at::Tensor gated_activation_cpu(const at::Tensor& h_in, std::string_view activation, bool interleaved, double limit,
                                double alpha) {
  at::Tensor a = reusable_like(gated_activation_outputs(h_in, activation, interleaved, limit, alpha));
  const GatedKind kind = parse_gated_kind("pesc.gated_activation", activation, limit, alpha);
  const at::Tensor h = h_in.contiguous();
  const int64_t F = a.size(1);
  for_each_gated_rows(h, F, kind, interleaved, [&](auto k, auto il, auto* tag, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    constexpr int KIND = decltype(k)::value;
    constexpr bool IL = decltype(il)::value;
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* h_row = h.data_ptr<scalar_t>() + n * 2 * F;
      scalar_t* a_row = a.data_ptr<scalar_t>() + n * F;
      for (int64_t f = 0; f < F; ++f) {
        const float g = static_cast<float>(h_row[gate_column(f, F, IL)]);
        const float u = static_cast<float>(h_row[up_column(f, F, IL)]);
        a_row[f] = static_cast<scalar_t>(gated_value<KIND>(g, u, kind));
      }
    }
  });
  return a;
}

at::Tensor gated_activation_backward_cpu(const at::Tensor& grad_a_in, const at::Tensor& h_in,
                                         std::string_view activation, bool interleaved, double limit, double alpha) {
  at::Tensor grad_h =
      reusable_like(gated_activation_backward_outputs(grad_a_in, h_in, activation, interleaved, limit, alpha));
  const GatedKind kind = parse_gated_kind("pesc.gated_activation_backward", activation, limit, alpha);
  const at::Tensor h = h_in.contiguous(), grad_a = grad_a_in.contiguous();
  const int64_t F = grad_a.size(1);
  for_each_gated_rows(h, F, kind, interleaved, [&](auto k, auto il, auto* tag, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    constexpr int KIND = decltype(k)::value;
    constexpr bool IL = decltype(il)::value;
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* h_row = h.data_ptr<scalar_t>() + n * 2 * F;
      const scalar_t* ga_row = grad_a.data_ptr<scalar_t>() + n * F;
      scalar_t* out_row = grad_h.data_ptr<scalar_t>() + n * 2 * F;
      for (int64_t f = 0; f < F; ++f) {
        const int64_t gc = gate_column(f, F, IL), uc = up_column(f, F, IL);
        const GatedGrad d = gated_grad<KIND>(static_cast<float>(h_row[gc]), static_cast<float>(h_row[uc]),
                                             static_cast<float>(ga_row[f]), kind);
        out_row[gc] = static_cast<scalar_t>(d.dg);
        out_row[uc] = static_cast<scalar_t>(d.du);
      }
    }
  });
  return grad_h;
}

std::tuple<at::Tensor, at::Tensor> adapter_cpu(const at::Tensor& x_in, const at::Tensor& w_down_in,
                                               const at::Tensor& w_up_in, const at::Tensor& expert_offsets,
                                               std::string_view activation, double scaling) {
  auto [y, h] = reusable(adapter_outputs(x_in, w_down_in, w_up_in, expert_offsets, activation, scaling));
  const Activation act = parse_activation("pesc.adapter", activation);
  const at::Tensor x = x_in.contiguous(), w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  at::Tensor a = activation_is_identity(act, scaling) ? h : reusable_like(h);
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  for_each_row_piece(row_pieces(offsets, kRowsPerPiece), [&](const Piece& p) {
    mm_into(rows(h, p), rows(x, p), w_down.select(0, p.expert));
    if (!a.is_same(h)) scaled_activation_rows(h, a, p, act, static_cast<float>(scaling));
    mm_into(rows(y, p), rows(a, p), w_up.select(0, p.expert));
  });
  zero_dropped_rows(y, offsets);
  zero_dropped_rows(h, offsets);
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                                    const at::Tensor& w_down_in,
                                                                    const at::Tensor& w_up_in,
                                                                    const at::Tensor& expert_offsets,
                                                                    const at::Tensor& h_in, std::string_view activation,
                                                                    double scaling, std::array<bool, 3> output_mask) {
  auto [grad_x, grad_down, grad_up] = reusable(adapter_backward_outputs(
      grad_y_in, x_in, w_down_in, w_up_in, expert_offsets, h_in, activation, scaling, output_mask));
  const Activation act = parse_activation("pesc.adapter_backward", activation);
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), h = h_in.contiguous();
  const at::Tensor w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  const auto [need_x, need_down, need_up] = output_mask;
  const bool need_dh = need_x || need_down;
  const float s = static_cast<float>(scaling);
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  at::Tensor dh = need_dh ? reusable_like(h) : at::Tensor();
  at::Tensor a = need_up && !activation_is_identity(act, scaling) ? reusable_like(h) : h;
  // Row pieces: dA = dy @ w_up^T becomes dh in place, then dx = dh @ w_down^T; a = s * act(h) for dw_up.
  if (need_dh || !a.is_same(h)) {
    for_each_row_piece(row_pieces(offsets, kRowsPerPiece), [&](const Piece& p) {
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
  if (need_x) zero_dropped_rows(grad_x, offsets);
  return {grad_x, grad_down, grad_up};
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("grouped_mm", &pesc::grouped_mm_cpu);
  m.impl("grouped_mm_backward", &pesc::grouped_mm_backward_cpu);
  m.impl("adapter", &pesc::adapter_cpu);
  m.impl("adapter_backward", &pesc::adapter_backward_cpu);
  m.impl("gated_activation", &pesc::gated_activation_cpu);
  m.impl("gated_activation_backward", &pesc::gated_activation_backward_cpu);
}

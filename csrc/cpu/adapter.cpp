// CPU kernels of the grouped GEMMs on expert segments (DESIGN.md 2.3), on torch's BLAS.
//
//   grouped_mm: y[seg e] = x[seg e] @ w[e]                  x [N, K], w [E, K, M], y [N, M]
//   adapter:    h[seg e] = x[seg e] @ w_down[e]             x [N, d], w_down [E, d, r], h [N, r]
//               y[seg e] = (scaling * act(h[seg e])) @ w_up[e]          w_up [E, r, d], y [N, d]
//   backward:   dA = dy @ w_up[e]^T,  dh = scaling * act'(h) * dA,  dx = dh @ w_down[e]^T,
//               dw_up[e] = (scaling * act(h))[seg]^T @ dy[seg],  dw_down[e] = x[seg]^T @ dh[seg]
// Segment e is rows expert_offsets[e] .. expert_offsets[e+1]; all tensors row-major, in x's dtype
// (fp32/fp16/bf16; BLAS accumulates in fp32, the activation math runs in fp32 through the helpers
// of common/activations.h, which the CUDA kernels run too).
//
// Work is cut into pieces whose shapes depend only on the problem (never on the thread count):
//   row pieces     (expert, rows [b, b + rows_per_piece)) for the products that write rows,
//   weight pieces  (expert, a block of kWeightBlock rows or columns of the [K, M] weight gradient),
//                  each reducing over the whole segment in one GEMM, so no partial sums or atomics.
// Pieces run in parallel (at::parallel_for), each piece one single-threaded BLAS call on
// contiguous or simply-strided views (no copies): experts run in parallel when segments are
// small and large segments split into several pieces. The adapter applies activation and scaling
// to a row piece's [rows, r] block between its two GEMMs, while it is in cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <vector>

#include "common/activations.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "ops.h"

namespace pesc {
namespace {

// Rows per row piece. fp32 BLAS is about as fast at 256 rows as at 4096 on one core, while the
// bf16/fp16 paths (oneDNN) want longer panels.
int64_t rows_per_piece(const at::Tensor& x) { return x.scalar_type() == at::kFloat ? 256 : 1024; }
// Rows or columns of a weight gradient per weight piece.
constexpr int64_t kWeightBlock = 256;

struct Piece {
  int64_t expert;
  int64_t begin;
  int64_t end;
  int64_t size() const { return end - begin; }
};

std::vector<int64_t> read_offsets(const at::Tensor& expert_offsets) {
  const at::Tensor o = expert_offsets.contiguous();
  return std::vector<int64_t>(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel());
}

std::vector<Piece> row_pieces(const std::vector<int64_t>& offsets, int64_t rows) {
  std::vector<Piece> pieces;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    for (int64_t b = offsets[e]; b < offsets[e + 1]; b += rows)
      pieces.push_back({static_cast<int64_t>(e), b, std::min(b + rows, offsets[e + 1])});
  }
  return pieces;
}

// Blocks of the [K, M] weight gradient of every expert (empty experts included: they get zeros),
// cut along the longer side: [begin, end) are rows when K >= M, else columns.
std::vector<Piece> weight_pieces(int64_t E, int64_t K, int64_t M) {
  const int64_t extent = std::max(K, M);
  std::vector<Piece> pieces;
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t b = 0; b < std::max<int64_t>(extent, 1); b += kWeightBlock)
      pieces.push_back({e, b, std::min(b + kWeightBlock, extent)});
  }
  return pieces;
}

// Runs fn(piece) for every piece in parallel. Worker threads do not inherit the caller's dispatch
// state, so each excludes autograd itself: the views and out= GEMMs below are plain kernel calls.
template <typename Fn>
void for_each_piece(const std::vector<Piece>& pieces, const Fn& fn) {
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t i = begin; i < end; ++i) fn(pieces[i]);
  });
}

// out = a @ b into a view of a larger output (mm_out writes a view of the right shape in place).
void mm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); }

at::Tensor rows(const at::Tensor& t, const Piece& p) { return t.narrow(0, p.begin, p.size()); }
at::Tensor segment(const at::Tensor& t, const std::vector<int64_t>& offsets, int64_t e) {
  return t.narrow(0, offsets[e], offsets[e + 1] - offsets[e]);
}

// grad_w[e] block = a[seg e]^T @ b[seg e] for one weight piece (a [N, K], b [N, M], grad_w [E, K, M]).
void weight_grad_piece(const at::Tensor& grad_w, const at::Tensor& a, const at::Tensor& b,
                       const std::vector<int64_t>& offsets, const Piece& p) {
  const bool by_rows = grad_w.size(1) >= grad_w.size(2);
  at::Tensor out = grad_w.select(0, p.expert).narrow(by_rows ? 0 : 1, p.begin, p.size());
  if (offsets[p.expert] == offsets[p.expert + 1]) {
    out.zero_();
    return;
  }
  at::Tensor a_seg = segment(a, offsets, p.expert), b_seg = segment(b, offsets, p.expert);
  if (by_rows)
    a_seg = a_seg.narrow(1, p.begin, p.size());
  else
    b_seg = b_seg.narrow(1, p.begin, p.size());
  mm_into(out, a_seg.t(), b_seg);
}

at::Tensor weight_grad(const at::Tensor& a, const at::Tensor& b, const std::vector<int64_t>& offsets) {
  const int64_t E = static_cast<int64_t>(offsets.size()) - 1, K = a.size(1), M = b.size(1);
  at::Tensor grad_w = at::empty({E, K, M}, a.options());
  for_each_piece(weight_pieces(E, K, M),
                 [&](const Piece& p) { weight_grad_piece(grad_w, a, b, offsets, p); });
  return grad_w;
}

// a = scaling * act(h) over n contiguous elements.
template <typename scalar_t>
void scaled_activation(const scalar_t* h, scalar_t* a, int64_t n, Activation act, float scaling) {
  for (int64_t i = 0; i < n; ++i) a[i] = scalar_t(scaling * activation_forward(act, static_cast<float>(h[i])));
}

// g = scaling * act'(h) * g in place over n contiguous elements (dA becomes dh).
template <typename scalar_t>
void activation_grad_inplace(const scalar_t* h, scalar_t* g, int64_t n, Activation act, float scaling) {
  for (int64_t i = 0; i < n; ++i)
    g[i] = scalar_t(scaling * activation_derivative(act, static_cast<float>(h[i])) * static_cast<float>(g[i]));
}

// The elementwise step of one row piece, in the dtype of the [N, r] buffers.
void scaled_activation_rows(const at::Tensor& h, const at::Tensor& a, const Piece& p, Activation act, float scaling) {
  const int64_t r = h.size(1);
  PESC_DISPATCH_FLOAT_TYPES(h.scalar_type(), "adapter_activation", [&] {
    scaled_activation(h.data_ptr<scalar_t>() + p.begin * r, a.data_ptr<scalar_t>() + p.begin * r, p.size() * r, act,
                      scaling);
  });
}

void activation_grad_rows(const at::Tensor& h, const at::Tensor& g, const Piece& p, Activation act, float scaling) {
  const int64_t r = h.size(1);
  PESC_DISPATCH_FLOAT_TYPES(h.scalar_type(), "adapter_activation_grad", [&] {
    activation_grad_inplace(h.data_ptr<scalar_t>() + p.begin * r, g.data_ptr<scalar_t>() + p.begin * r,
                            p.size() * r, act, scaling);
  });
}

// The activation buffer a = scaling * act(h) aliases h when that is the identity map.
bool activation_is_identity(Activation act, double scaling) { return act == Activation::Identity && scaling == 1.0; }

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace

at::Tensor grouped_mm_cpu(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& expert_offsets) {
  check_grouped_mm(x_in, w_in, expert_offsets);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  at::Tensor y = at::empty({x.size(0), w.size(2)}, x.options());
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  for_each_piece(row_pieces(offsets, rows_per_piece(x)),
                 [&](const Piece& p) { mm_into(rows(y, p), rows(x, p), w.select(0, p.expert)); });
  return y;
}

std::tuple<at::Tensor, at::Tensor> grouped_mm_backward_cpu(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                           const at::Tensor& w_in, const at::Tensor& expert_offsets,
                                                           std::array<bool, 2> output_mask) {
  check_grouped_mm_backward(grad_y_in, x_in, w_in, expert_offsets);
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  at::Tensor grad_x = empty_grad(x), grad_w = empty_grad(x);
  if (output_mask[0]) {
    grad_x = at::empty_like(x);
    for_each_piece(row_pieces(offsets, rows_per_piece(x)), [&](const Piece& p) {
      mm_into(rows(grad_x, p), rows(grad_y, p), w.select(0, p.expert).t());
    });
  }
  if (output_mask[1]) grad_w = weight_grad(x, grad_y, offsets);
  return {grad_x, grad_w};
}

std::tuple<at::Tensor, at::Tensor> adapter_cpu(const at::Tensor& x_in, const at::Tensor& w_down_in,
                                               const at::Tensor& w_up_in, const at::Tensor& expert_offsets,
                                               std::string_view activation, double scaling) {
  const Activation act = check_adapter(x_in, w_down_in, w_up_in, expert_offsets, activation);
  const at::Tensor x = x_in.contiguous(), w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  const int64_t N = x.size(0), d = x.size(1), r = w_down.size(2);
  at::Tensor h = at::empty({N, r}, x.options());
  at::Tensor a = activation_is_identity(act, scaling) ? h : at::empty({N, r}, x.options());
  at::Tensor y = at::empty({N, d}, x.options());
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  for_each_piece(row_pieces(offsets, rows_per_piece(x)), [&](const Piece& p) {
    mm_into(rows(h, p), rows(x, p), w_down.select(0, p.expert));
    if (!a.is_same(h)) scaled_activation_rows(h, a, p, act, static_cast<float>(scaling));
    mm_into(rows(y, p), rows(a, p), w_up.select(0, p.expert));
  });
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& w_down_in, const at::Tensor& w_up_in,
    const at::Tensor& expert_offsets, const at::Tensor& h_in, std::string_view activation, double scaling,
    std::array<bool, 3> output_mask) {
  const Activation act = check_adapter_backward(grad_y_in, x_in, w_down_in, w_up_in, expert_offsets, h_in, activation);
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), h = h_in.contiguous();
  const at::Tensor w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  const auto [need_x, need_down, need_up] = output_mask;
  const bool need_dh = need_x || need_down;
  const float s = static_cast<float>(scaling);
  const std::vector<int64_t> offsets = read_offsets(expert_offsets);
  at::Tensor grad_x = need_x ? at::empty_like(x) : empty_grad(x);
  at::Tensor dh = need_dh ? at::empty_like(h) : empty_grad(x);
  at::Tensor a = need_up && !activation_is_identity(act, scaling) ? at::empty_like(h) : h;
  // Row pieces: dA = dy @ w_up^T becomes dh in place, then dx = dh @ w_down^T; a = s * act(h) for dw_up.
  if (need_dh || !a.is_same(h)) {
    for_each_piece(row_pieces(offsets, rows_per_piece(x)), [&](const Piece& p) {
      if (!a.is_same(h)) scaled_activation_rows(h, a, p, act, s);
      if (!need_dh) return;
      mm_into(rows(dh, p), rows(grad_y, p), w_up.select(0, p.expert).t());
      activation_grad_rows(h, dh, p, act, s);
      if (need_x) mm_into(rows(grad_x, p), rows(dh, p), w_down.select(0, p.expert).t());
    });
  }
  at::Tensor grad_down = need_down ? weight_grad(x, dh, offsets) : empty_grad(x);
  at::Tensor grad_up = need_up ? weight_grad(a, grad_y, offsets) : empty_grad(x);
  return {grad_x, grad_down, grad_up};
}

}  // namespace pesc

// CPU kernels for the routing ops (docs/design.md, "Routing"):
//
//   topk_gating(logits[T,E]) -> weights[T,k] fp32, indices[T,k] int32
//   load_balancing_loss(logits[T,E], indices[T,k], mask[T]?) -> E * sum_e f_e * P_e   (0-dim fp32)
//   router_z_loss(logits[T,E], mask[T]?) -> mean_t lse_t^2                             (0-dim fp32)
//   topk_gating_with_balancing_loss(logits, k, normalize, mask?) -> weights, indices, the balancing
//     loss of that selection and its routed_counts[E+1] int32, in one pass over the logits
// and their backward passes (gradient to logits, in logits' dtype; the fused op's backward adds
// the gating and balancing gradients in fp32 and rounds once).
// logits may be fp32, fp16 or bf16; all math runs in fp32 through the helpers in gating/math.h,
// which the CUDA kernels run too.
//
// This file validates and allocates (gating/ops.h; the [T, k] and [T, E] outputs on the reusable
// buffers of core/cpu_buffers.h), deals chunks of kTokensPerChunk tokens to threads with
// at::parallel_for, and calls the SIMD kernels of gating/cpu_kernels.h for the instruction set
// chosen at first use: AVX2 where the CPU has it (unless ATEN_CPU_CAPABILITY=default), else the
// portable build.
//
// Determinism: the kernels write one partial sum per chunk, which this file adds in chunk order,
// and every gradient row depends on its own token only; so every op gives the same bits for any
// thread count (on the same instruction set).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include <torch/library.h>

#include "core/checks.h"
#include "core/cpu_buffers.h"
#include "core/tensor_utils.h"
#include "gating/cpu_kernels.h"
#include "gating/math.h"
#include "gating/ops.h"

namespace pesc {
namespace {

const RouterKernels& choose_router_kernels() {
#if PESC_ROUTER_KERNELS_AVX2
  // ATen's own choice, which ATEN_CPU_CAPABILITY can lower; AVX-512 CPUs run the AVX2 kernels.
  const std::string capability = at::get_cpu_capability();
  if ((capability == "AVX2" || capability == "AVX512") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return router_kernels_avx2();
#endif
  return router_kernels_default();
}

const RouterKernels& router_kernels() {
  static const RouterKernels& kernels = choose_router_kernels();
  return kernels;
}

int64_t token_chunks(int64_t T) { return ceil_div(T, kTokensPerChunk); }

// Chunks per parallel task: at least ~16k logits, so that small inputs do not pay for threads.
int64_t chunk_grain(int64_t E) { return std::max<int64_t>(1, (int64_t{1} << 14) / (kTokensPerChunk * E)); }

// Runs run(kernels, chunk_begin, chunk_end, scratch) over all chunks of T tokens, in parallel.
template <typename RunFn>
void for_token_chunks(int64_t T, int64_t E, int64_t k, const RunFn& run) {
  const RouterKernels& kernels = router_kernels();
  const int64_t scratch_bytes = kernels.scratch_bytes(E, k);
  at::parallel_for(0, token_chunks(T), chunk_grain(E), [&](int64_t begin, int64_t end) {
    std::vector<std::byte> scratch(scratch_bytes);
    run(kernels, begin, end, scratch.data());
  });
}

void run_forward(const RouterForward& args) {
  for_token_chunks(args.logits.tokens, args.logits.experts, args.k,
                   [&](const RouterKernels& kernels, int64_t begin, int64_t end, void* scratch) {
                     kernels.forward(args, begin, end, scratch);
                   });
}

void run_backward(const RouterBackward& args) {
  for_token_chunks(args.logits.tokens, args.logits.experts, args.k,
                   [&](const RouterKernels& kernels, int64_t begin, int64_t end, void* scratch) {
                     kernels.backward(args, begin, end, scratch);
                   });
}

RouterLogits router_logits(const at::Tensor& contiguous_logits, const bool* mask) {
  return {contiguous_logits.const_data_ptr(), dtype_of(contiguous_logits), contiguous_logits.size(0),
          contiguous_logits.size(1), mask};
}

// Adds [chunks, width] partial sums over the chunks, in chunk order.
std::vector<float> add_chunk_partials(const std::vector<float>& partials, int64_t width) {
  std::vector<float> total(width, 0.f);
  for (size_t c = 0; c * width < partials.size(); ++c)
    for (int64_t i = 0; i < width; ++i) total[i] += partials[c * width + i];
  return total;
}

bool token_counts(const bool* mask, int64_t t) { return mask == nullptr || mask[t]; }

const bool* mask_ptr(const std::optional<at::Tensor>& mask, at::Tensor& holder) {
  if (!mask.has_value()) return nullptr;
  holder = mask->contiguous();
  return holder.data_ptr<bool>();
}

// Routed-slot counts per expert over the tokens that count; order-free integer sums.
struct RoutedCounts {
  std::vector<int64_t> per_expert;
  int64_t tokens = 0;
};

RoutedCounts count_routed_slots(const at::Tensor& indices, const bool* mask, int64_t E) {
  const at::Tensor idx = indices.contiguous();
  const int32_t* ids = idx.data_ptr<int32_t>();
  const int64_t T = idx.size(0), k = idx.size(1);
  RoutedCounts counts{std::vector<int64_t>(E, 0), 0};
  for (int64_t t = 0; t < T; ++t) {
    if (!token_counts(mask, t)) continue;
    ++counts.tokens;
    for (int64_t j = 0; j < k; ++j) ++counts.per_expert[ids[t * k + j]];
  }
  return counts;
}

int64_t count_tokens(const bool* mask, int64_t T) { return mask == nullptr ? T : std::count(mask, mask + T, true); }

// Per-expert sums of p over the counted tokens (chunk partials added in chunk order); `args`
// may also select, in the same pass.
std::vector<float> probability_sums(RouterForward args) {
  const int64_t E = args.logits.experts;
  std::vector<float> partials(token_chunks(args.logits.tokens) * E);
  args.prob_sums = partials.data();
  run_forward(args);
  return add_chunk_partials(partials, E);
}

// E * sum_e f_e * P_e; 0 when no token counts.
float balancing_loss_value(const RoutedCounts& counts, const std::vector<float>& prob_sums, int64_t k) {
  if (counts.tokens == 0) return 0.f;
  const int64_t E = static_cast<int64_t>(counts.per_expert.size());
  float loss = 0.f;
  for (int64_t e = 0; e < E; ++e)
    loss += balance_term(static_cast<float>(counts.per_expert[e]), prob_sums[e], static_cast<float>(counts.tokens),
                         static_cast<float>(k));
  return loss * static_cast<float>(E);
}

// The balancing loss's gradient part: f_e, and the scale g * E / tokens of dL/dl_te =
// scale * p_te * (f_e - <p_t, f>). Needs counts.tokens > 0.
void set_balance_gradient(RouterBackward& args, const RoutedCounts& counts, int64_t k, float grad,
                          std::vector<float>& fraction) {
  const int64_t E = static_cast<int64_t>(counts.per_expert.size());
  fraction.resize(E);
  for (int64_t e = 0; e < E; ++e)
    fraction[e] = routed_fraction(static_cast<float>(counts.per_expert[e]), static_cast<float>(counts.tokens),
                                  static_cast<float>(k));
  args.routed_fraction = fraction.data();
  args.balance_scale = grad * static_cast<float>(E) / static_cast<float>(counts.tokens);
}

void set_gating_gradient(RouterBackward& args, const at::Tensor& grad_weights, const at::Tensor& weights,
                         const at::Tensor& indices, bool normalize) {
  args.grad_weights = grad_weights.data_ptr<float>();
  args.weights = weights.data_ptr<float>();
  args.indices = indices.data_ptr<int32_t>();
  args.k = indices.size(1);
  args.normalize = normalize;
}

std::tuple<at::Tensor, at::Tensor> topk_gating_cpu(const at::Tensor& logits_in, int64_t k, bool normalize) {
  auto [weights, indices] = reusable(topk_gating_outputs(logits_in, k, normalize));
  const at::Tensor logits = logits_in.contiguous();
  RouterForward args;
  args.logits = router_logits(logits, nullptr);
  args.k = k;
  args.normalize = normalize;
  args.weights = weights.data_ptr<float>();
  args.indices = indices.data_ptr<int32_t>();
  run_forward(args);
  return {weights, indices};
}

at::Tensor topk_gating_backward_cpu(const at::Tensor& grad_weights_in, const at::Tensor& logits_in,
                                    const at::Tensor& weights_in, const at::Tensor& indices_in, bool normalize) {
  at::Tensor grad_logits =
      reusable_like(topk_gating_backward_outputs(grad_weights_in, logits_in, weights_in, indices_in, normalize));
  check_expert_ids_cpu("pesc.topk_gating_backward", indices_in, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous(), grad_weights = grad_weights_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), indices = indices_in.contiguous();
  RouterBackward args;
  args.logits = router_logits(logits, nullptr);
  args.grad_logits = grad_logits.data_ptr();
  set_gating_gradient(args, grad_weights, weights, indices, normalize);
  run_backward(args);
  return grad_logits;
}

at::Tensor load_balancing_loss_cpu(const at::Tensor& logits_in, const at::Tensor& indices,
                                   const std::optional<at::Tensor>& mask) {
  at::Tensor loss = load_balancing_loss_outputs(logits_in, indices, mask);
  check_expert_ids_cpu("pesc.load_balancing_loss", indices, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const RoutedCounts counts = count_routed_slots(indices, m, logits.size(1));
  if (counts.tokens == 0) return loss.fill_(0.f);
  RouterForward args;
  args.logits = router_logits(logits, m);
  return loss.fill_(balancing_loss_value(counts, probability_sums(args), indices.size(1)));
}

at::Tensor load_balancing_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_in,
                                            const at::Tensor& indices, const std::optional<at::Tensor>& mask) {
  at::Tensor grad_logits = reusable_like(load_balancing_loss_backward_outputs(grad, logits_in, indices, mask));
  check_expert_ids_cpu("pesc.load_balancing_loss_backward", indices, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const RoutedCounts counts = count_routed_slots(indices, m, logits.size(1));
  if (counts.tokens == 0) return grad_logits.zero_();
  RouterBackward args;
  args.logits = router_logits(logits, m);
  args.grad_logits = grad_logits.data_ptr();
  std::vector<float> fraction;
  set_balance_gradient(args, counts, indices.size(1), grad.item<float>(), fraction);
  run_backward(args);
  return grad_logits;
}

at::Tensor router_z_loss_cpu(const at::Tensor& logits_in, const std::optional<at::Tensor>& mask) {
  at::Tensor loss = router_z_loss_outputs(logits_in, mask);
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const int64_t tokens = count_tokens(m, logits.size(0));
  if (tokens == 0) return loss.fill_(0.f);
  std::vector<float> partials(token_chunks(logits.size(0)));
  RouterForward args;
  args.logits = router_logits(logits, m);
  args.lse_square_sums = partials.data();
  run_forward(args);
  return loss.fill_(add_chunk_partials(partials, 1)[0] / static_cast<float>(tokens));
}

at::Tensor router_z_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_in,
                                      const std::optional<at::Tensor>& mask) {
  at::Tensor grad_logits = reusable_like(router_z_loss_backward_outputs(grad, logits_in, mask));
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const int64_t tokens = count_tokens(m, logits.size(0));
  if (tokens == 0) return grad_logits.zero_();
  // dL/dl_te = g * 2 * lse_t / tokens * p_te
  RouterBackward args;
  args.logits = router_logits(logits, m);
  args.grad_logits = grad_logits.data_ptr();
  args.z_loss = true;
  args.z_scale = grad.item<float>() * 2.f / static_cast<float>(tokens);
  run_backward(args);
  return grad_logits;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_gating_with_balancing_loss_cpu(
    const at::Tensor& logits_in, int64_t k, bool normalize, const std::optional<at::Tensor>& mask) {
  auto [weights_out, indices_out, loss, routed_counts] =
      topk_gating_with_balancing_loss_outputs(logits_in, k, normalize, mask);
  const auto [weights, indices] = reusable(std::tuple{weights_out, indices_out});
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  std::vector<int32_t> count_partials(token_chunks(T) * E);
  RouterForward args;
  args.logits = router_logits(logits, m);
  args.k = k;
  args.normalize = normalize;
  args.weights = weights.data_ptr<float>();
  args.indices = indices.data_ptr<int32_t>();
  args.slot_counts = count_partials.data();
  const std::vector<float> prob_sums = probability_sums(args);
  RoutedCounts counts{std::vector<int64_t>(E, 0), count_tokens(m, T)};
  for (size_t i = 0; i < count_partials.size(); ++i) counts.per_expert[i % E] += count_partials[i];
  int32_t* out_counts = routed_counts.data_ptr<int32_t>();
  for (int64_t e = 0; e < E; ++e) out_counts[e] = static_cast<int32_t>(counts.per_expert[e]);
  out_counts[E] = static_cast<int32_t>(counts.tokens);
  loss.fill_(balancing_loss_value(counts, prob_sums, k));
  return {weights, indices, loss, routed_counts};
}

at::Tensor topk_gating_with_balancing_loss_backward_cpu(const at::Tensor& grad_weights_in, const at::Tensor& grad_loss,
                                                        const at::Tensor& logits_in, const at::Tensor& weights_in,
                                                        const at::Tensor& indices_in,
                                                        const at::Tensor& routed_counts_in,
                                                        const std::optional<at::Tensor>& mask, bool normalize) {
  at::Tensor grad_logits = reusable_like(topk_gating_with_balancing_loss_backward_outputs(
      grad_weights_in, grad_loss, logits_in, weights_in, indices_in, routed_counts_in, mask, normalize));
  check_expert_ids_cpu("pesc.topk_gating_with_balancing_loss_backward", indices_in, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous(), grad_weights = grad_weights_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor routed_counts = routed_counts_in.contiguous();
  const int64_t E = logits.size(1);
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const int32_t* saved = routed_counts.data_ptr<int32_t>();
  const RoutedCounts counts{std::vector<int64_t>(saved, saved + E), saved[E]};
  RouterBackward args;
  args.logits = router_logits(logits, m);
  args.grad_logits = grad_logits.data_ptr();
  set_gating_gradient(args, grad_weights, weights, indices, normalize);
  std::vector<float> fraction;
  if (counts.tokens > 0) set_balance_gradient(args, counts, indices.size(1), grad_loss.item<float>(), fraction);
  run_backward(args);
  return grad_logits;
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("topk_gating", &pesc::topk_gating_cpu);
  m.impl("topk_gating_backward", &pesc::topk_gating_backward_cpu);
  m.impl("load_balancing_loss", &pesc::load_balancing_loss_cpu);
  m.impl("load_balancing_loss_backward", &pesc::load_balancing_loss_backward_cpu);
  m.impl("router_z_loss", &pesc::router_z_loss_cpu);
  m.impl("router_z_loss_backward", &pesc::router_z_loss_backward_cpu);
  m.impl("topk_gating_with_balancing_loss", &pesc::topk_gating_with_balancing_loss_cpu);
  m.impl("topk_gating_with_balancing_loss_backward", &pesc::topk_gating_with_balancing_loss_backward_cpu);
}

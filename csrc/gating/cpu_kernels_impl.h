// The CPU routing kernels for one instruction set (interface and layouts: gating/cpu_kernels.h).
// Included only by cpu_kernels_<isa>.cpp, after CPU_CAPABILITY names the instruction set, so that
// at::vec::Vectorized<float> has that set's width and intrinsics (ATen's convention) and every
// definition here lands in the namespace pesc::<CPU_CAPABILITY>, distinct per instruction set.
//
// SIMD layout: a block of L = Vectorized<float>::size() consecutive tokens is transposed into
// lane-major scratch, x[e * L + lane] = logit (token t0 + lane, expert e), so that the formulas of
// gating/math.h run on L tokens at once, one token per lane, each lane in the scalar code's order
// (sums over experts run e = 0..E-1). A short last block is padded with zero logits; its padding
// lanes are computed but never stored or counted.
//
// Top-k: each lane keeps K slots sorted by topk_order_key. Experts are offered in increasing
// order and enter where their key is strictly larger: an equal key belongs to a lower expert, which
// ranks first. The slots therefore hold the topk_ranks_before order exactly, the same experts the
// CUDA kernels pick. K is the smallest power of two >= k (slots past k are ignored); for k > 32
// each lane sorts its keys instead.
//
// Sums: each chunk accumulates per lane, tokens in order; its partial is the sum of the lanes in
// lane order. Nothing depends on the thread count.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/limits.h"
#include "core/static_switch.h"
#include "gating/cpu_kernels.h"
#include "gating/math.h"

#define PESC_ROUTER_STRINGIFY_(x) #x
#define PESC_ROUTER_STRINGIFY(x) PESC_ROUTER_STRINGIFY_(x)

namespace pesc {

// One token per lane; masks are all-ones lanes. exp is ATen's exp_u20: in the AVX2 build a
// degree-5 polynomial within 20 ulp of expf (a softmax pass about 20% faster than with Sleef's 1-ulp
// exp), in the portable build std::exp per lane. The polynomial's argument clamp would turn NaN into
// a finite value, so NaN lanes are forced back to NaN (all-ones bits): a row with a NaN still gives
// NaN probabilities. exp(-inf) = 0 as for expf. log is Sleef's (1 ulp) or std::log.
template <>
struct LaneMath<at::vec::Vectorized<float>> {
  using Float = at::vec::Vectorized<float>;
  using Int = at::vec::Vectorized<int32_t>;
  static Float exp(const Float& x) { return x.exp_u20() | (x != x); }
  static Float log(const Float& x) { return x.log(); }
  static Int bits(const Float& x) { return at::vec::cast<int32_t>(x); }
  static Int select(const Float& mask, const Int& if_true, const Int& if_false) {
    return Int::blendv(if_false, if_true, at::vec::cast<int32_t>(mask));
  }
};

namespace CPU_CAPABILITY {
namespace {

using Floats = at::vec::Vectorized<float>;
using Ints = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = Floats::size();
static_assert(Ints::size() == kLanes, "int and float lanes must pair up");
static_assert(kTokensPerChunk % kLanes == 0, "SIMD blocks must not straddle chunks");
static_assert(kMaxExperts <= 1024, "the sort path packs an expert id into 10 bits");

constexpr int kMaxSlots = 32;  // largest K of the slot selection; larger k sort per lane

struct StorageTypes {
  using f32 = float;
  using f16 = c10::Half;
  using bf16 = c10::BFloat16;
};

// ------------------------------------------------------------------------------------ scratch
struct Scratch {
  float* x;         // [E][L] the block's logits
  float* p;         // [E][L] softmax terms exp(l - m), then probabilities
  float* acc;       // [E][L] the chunk's per-lane probability sums (forward); the gradient (backward)
  int32_t* ids;     // [k][L] selected ids
  float* sel;       // [k][L] selected probabilities, then weights (forward); weights (backward)
  float* sel_grad;  // [k][L] grad_weights (backward)
  int32_t* keys;    // [E][L] order keys (sort path)
  int64_t* pairs;   // [E] one lane's packed (key, id) pairs (sort path)
};

struct ScratchLayout {
  int64_t x, p, acc, ids, sel, sel_grad, keys, pairs, total;
};

constexpr int64_t kScratchAlign = 64;

ScratchLayout scratch_layout(int64_t E, int64_t k) {
  ScratchLayout s{};
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t offset = at;
    at += (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
    return offset;
  };
  const int64_t k_slots = std::max<int64_t>(k, 1);
  s.x = take(E * kLanes * sizeof(float));
  s.p = take(E * kLanes * sizeof(float));
  s.acc = take(E * kLanes * sizeof(float));
  s.ids = take(k_slots * kLanes * sizeof(int32_t));
  s.sel = take(k_slots * kLanes * sizeof(float));
  s.sel_grad = take(k_slots * kLanes * sizeof(float));
  s.keys = take(E * kLanes * sizeof(int32_t));
  s.pairs = take(E * sizeof(int64_t));
  s.total = at + kScratchAlign;  // room to align the base
  return s;
}

int64_t scratch_bytes(int64_t E, int64_t k) { return scratch_layout(E, k).total; }

Scratch carve(void* memory, int64_t E, int64_t k) {
  const ScratchLayout s = scratch_layout(E, k);
  const auto address = reinterpret_cast<uintptr_t>(memory);
  std::byte* base = static_cast<std::byte*>(memory) + (kScratchAlign - address % kScratchAlign) % kScratchAlign;
  return {reinterpret_cast<float*>(base + s.x),      reinterpret_cast<float*>(base + s.p),
          reinterpret_cast<float*>(base + s.acc),    reinterpret_cast<int32_t*>(base + s.ids),
          reinterpret_cast<float*>(base + s.sel),    reinterpret_cast<float*>(base + s.sel_grad),
          reinterpret_cast<int32_t*>(base + s.keys), reinterpret_cast<int64_t*>(base + s.pairs)};
}

// ------------------------------------------------------------------------------------- blocks
Floats lanes_at(const float* block, int64_t e) { return Floats::loadu(block + e * kLanes); }

bool token_counts(const bool* mask, int64_t t) { return mask == nullptr || mask[t]; }

// All-ones lanes for the tokens that exist (lane < rows) and count; zero lanes elsewhere.
Floats counted_lanes(const bool* mask, int64_t t0, int64_t rows) {
  int32_t bits[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) bits[l] = l < rows && token_counts(mask, t0 + l) ? -1 : 0;
  return at::vec::cast<float>(Ints::loadu(bits));
}

Floats where(const Floats& mask, const Floats& value) { return Floats::blendv(Floats(0.f), value, mask); }

// fp32 blocks of 8 tokens move through 8 x 8 tiles in registers (ATen's transpose_mxn); the rest
// of a row (E % 8 experts), other dtypes and short blocks element by element.
template <typename scalar_t>
constexpr bool kTiledTranspose = std::is_same_v<scalar_t, float> && kLanes == 8;

// x[e][l] = logits[t0 + l][e] in fp32, zero for the padding lanes l >= rows.
template <typename scalar_t>
void load_block(const scalar_t* logits, int64_t E, int64_t t0, int64_t rows, float* x) {
  int64_t e0 = 0;
  if constexpr (kTiledTranspose<scalar_t>) {
    if (rows == kLanes)
      for (; e0 + 8 <= E; e0 += 8)
        at::vec::transpose_mxn<float, 8, 8>(logits + t0 * E + e0, E, x + e0 * kLanes, kLanes);
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    const scalar_t* row = logits + (t0 + l) * E;
    for (int64_t e = e0; e < E; ++e) x[e * kLanes + l] = l < rows ? static_cast<float>(row[e]) : 0.f;
  }
}

// out[t0 + l][e] = g[e][l] in the logits' dtype, for the lanes that exist.
template <typename scalar_t>
void store_block(const float* g, int64_t E, int64_t t0, int64_t rows, scalar_t* out) {
  int64_t e0 = 0;
  if constexpr (kTiledTranspose<scalar_t>) {
    if (rows == kLanes)
      for (; e0 + 8 <= E; e0 += 8) at::vec::transpose_mxn<float, 8, 8>(g + e0 * kLanes, kLanes, out + t0 * E + e0, E);
  }
  for (int64_t l = 0; l < rows; ++l) {
    scalar_t* row = out + (t0 + l) * E;
    for (int64_t e = e0; e < E; ++e) row[e] = static_cast<scalar_t>(g[e * kLanes + l]);
  }
}

struct BlockSoftmax {
  Floats max, sum, inv_sum;
};

// Row maxima and sums; leaves the terms exp(l - m) in p. A NaN logit makes its row's maximum NaN
// (the scalar code's fmaxf skips it instead); either way the row's sum and probabilities are NaN.
BlockSoftmax block_softmax(const float* x, float* p, int64_t E) {
  Floats m(-INFINITY);
  for (int64_t e = 0; e < E; ++e) m = at::vec::maximum(m, lanes_at(x, e));
  Floats s(0.f);
  for (int64_t e = 0; e < E; ++e) {
    const Floats term = softmax_term(lanes_at(x, e), m);
    term.store(p + e * kLanes);
    s = s + term;
  }
  return {m, s, softmax_inv_sum(s)};
}

// Turns the terms in p into probabilities.
void block_probs(float* p, const BlockSoftmax& sm, int64_t E) {
  for (int64_t e = 0; e < E; ++e) softmax_prob_of_term(lanes_at(p, e), sm.inv_sum).store(p + e * kLanes);
}

// The K best experts of each lane, best first (see the header comment).
template <int K>
struct TopSlots {
  Ints key[K];
  Ints id[K];

  TopSlots() {
    for (int j = 0; j < K; ++j) {
      key[j] = Ints(kTopkEmptyKey);
      id[j] = Ints(0);
    }
  }

  void offer(const Ints& cand_key, const Ints& cand_id) {
    Ints beats[K];
    for (int j = 0; j < K; ++j) beats[j] = cand_key > key[j];
    for (int j = K - 1; j > 0; --j) {
      key[j] = Ints::blendv(Ints::blendv(key[j], cand_key, beats[j]), key[j - 1], beats[j - 1]);
      id[j] = Ints::blendv(Ints::blendv(id[j], cand_id, beats[j]), id[j - 1], beats[j - 1]);
    }
    key[0] = Ints::blendv(key[0], cand_key, beats[0]);
    id[0] = Ints::blendv(id[0], cand_id, beats[0]);
  }
};

// ids[j][l] = the j-th expert of lane l, j < k.
template <int K>
void select_slots(const float* x, int64_t E, int64_t k, int32_t* ids) {
  TopSlots<K> slots;
  for (int64_t e = 0; e < E; ++e) slots.offer(topk_order_key(lanes_at(x, e)), Ints(static_cast<int32_t>(e)));
  for (int64_t j = 0; j < k; ++j) slots.id[j].store(ids + j * kLanes);
}

struct PackedDescending {
  bool operator()(int64_t a, int64_t b) const { return a > b; }
};

// The same selection for large k: per lane, a partial sort of (key, id) pairs packed so that the
// larger integer ranks first (the key, then the lower id).
void select_sorted(const float* x, int64_t E, int64_t k, int32_t* keys, int64_t* pairs, int32_t* ids) {
  constexpr int64_t kIdMask = 1023;
  for (int64_t e = 0; e < E; ++e) topk_order_key(lanes_at(x, e)).store(keys + e * kLanes);
  for (int64_t l = 0; l < kLanes; ++l) {
    for (int64_t e = 0; e < E; ++e) pairs[e] = static_cast<int64_t>(keys[e * kLanes + l]) * 1024 + (kIdMask - e);
    std::partial_sort(pairs, pairs + k, pairs + E, PackedDescending{});
    for (int64_t j = 0; j < k; ++j) ids[j * kLanes + l] = static_cast<int32_t>(kIdMask - (pairs[j] & kIdMask));
  }
}

// Weights of the selected experts from the terms in p, renormalized over the k in selection order.
void selected_weights(const float* p, const BlockSoftmax& sm, const int32_t* ids, int64_t k, bool normalize,
                      float* sel) {
  for (int64_t j = 0; j < k; ++j)
    for (int64_t l = 0; l < kLanes; ++l) sel[j * kLanes + l] = p[ids[j * kLanes + l] * kLanes + l];
  Floats selected_sum(0.f);
  for (int64_t j = 0; j < k; ++j) {
    const Floats prob = softmax_prob_of_term(lanes_at(sel, j), sm.inv_sum);
    prob.store(sel + j * kLanes);
    selected_sum = selected_sum + prob;
  }
  if (normalize)
    for (int64_t j = 0; j < k; ++j) renormalized_weight(lanes_at(sel, j), selected_sum).store(sel + j * kLanes);
}

float lane_sum(const Floats& v) {
  float lanes[kLanes];
  v.store(lanes);
  float s = 0.f;
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

// -------------------------------------------------------------------------------------- forward
// K: slots of the selection (a power of two), 0 for no selection, -1 for the sort path.
template <typename scalar_t, int K>
void forward_chunks(const RouterForward& a, int64_t chunk_begin, int64_t chunk_end, const Scratch& s) {
  const auto* logits = static_cast<const scalar_t*>(a.logits.data);
  const int64_t T = a.logits.tokens, E = a.logits.experts, k = a.k;
  const bool* mask = a.logits.mask;
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t t_begin = c * kTokensPerChunk, t_end = std::min(T, t_begin + kTokensPerChunk);
    int32_t* counts = a.slot_counts == nullptr ? nullptr : a.slot_counts + c * E;
    if (counts != nullptr) std::fill(counts, counts + E, 0);
    if (a.prob_sums != nullptr) std::fill(s.acc, s.acc + E * kLanes, 0.f);
    Floats lse_square_sum(0.f);
    for (int64_t t0 = t_begin; t0 < t_end; t0 += kLanes) {
      const int64_t rows = std::min(kLanes, t_end - t0);
      load_block(logits, E, t0, rows, s.x);
      if constexpr (K > 0) select_slots<K>(s.x, E, k, s.ids);
      if constexpr (K < 0) select_sorted(s.x, E, k, s.keys, s.pairs, s.ids);
      const BlockSoftmax sm = block_softmax(s.x, s.p, E);
      if constexpr (K != 0) {
        selected_weights(s.p, sm, s.ids, k, a.normalize, s.sel);
        for (int64_t l = 0; l < rows; ++l) {
          for (int64_t j = 0; j < k; ++j) {
            a.weights[(t0 + l) * k + j] = s.sel[j * kLanes + l];
            a.indices[(t0 + l) * k + j] = s.ids[j * kLanes + l];
          }
          if (counts != nullptr && token_counts(mask, t0 + l))
            for (int64_t j = 0; j < k; ++j) ++counts[s.ids[j * kLanes + l]];
        }
      }
      const Floats counted = counted_lanes(mask, t0, rows);
      if (a.prob_sums != nullptr) {
        for (int64_t e = 0; e < E; ++e) {
          const Floats prob = softmax_prob_of_term(lanes_at(s.p, e), sm.inv_sum);
          (lanes_at(s.acc, e) + where(counted, prob)).store(s.acc + e * kLanes);
        }
      }
      if (a.lse_square_sums != nullptr) {
        const Floats lse = log_sum_exp(sm.max, sm.sum);
        lse_square_sum = lse_square_sum + where(counted, lse * lse);
      }
    }
    if (a.prob_sums != nullptr)
      for (int64_t e = 0; e < E; ++e) a.prob_sums[c * E + e] = lane_sum(lanes_at(s.acc, e));
    if (a.lse_square_sums != nullptr) a.lse_square_sums[c] = lane_sum(lse_square_sum);
  }
}

void forward(const RouterForward& a, int64_t chunk_begin, int64_t chunk_end, void* scratch) {
  const Scratch s = carve(scratch, a.logits.experts, a.k);
  const bool select = a.k > 0 && a.weights != nullptr && a.indices != nullptr;
  PESC_DTYPE_SWITCH(a.logits.dtype, StorageTypes, [&] {
    if (!select) return forward_chunks<scalar_t, 0>(a, chunk_begin, chunk_end, s);
    if (a.k > kMaxSlots) return forward_chunks<scalar_t, -1>(a, chunk_begin, chunk_end, s);
    PESC_POW2_SWITCH(a.k, K, [&] { forward_chunks<scalar_t, K>(a, chunk_begin, chunk_end, s); });
  });
}

// ------------------------------------------------------------------------------------- backward
template <typename scalar_t>
void backward_chunks(const RouterBackward& a, int64_t chunk_begin, int64_t chunk_end, const Scratch& s) {
  const auto* logits = static_cast<const scalar_t*>(a.logits.data);
  auto* grad_logits = static_cast<scalar_t*>(a.grad_logits);
  const int64_t T = a.logits.tokens, E = a.logits.experts, k = a.k;
  const bool gating = a.grad_weights != nullptr;
  const bool balance = a.routed_fraction != nullptr;
  const bool needs_probs = balance || a.z_loss || (gating && !a.normalize);
  float* g = s.acc;
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    const int64_t t_begin = c * kTokensPerChunk, t_end = std::min(T, t_begin + kTokensPerChunk);
    for (int64_t t0 = t_begin; t0 < t_end; t0 += kLanes) {
      const int64_t rows = std::min(kLanes, t_end - t0);
      const Floats counted = counted_lanes(a.logits.mask, t0, rows);
      BlockSoftmax sm{};
      if (needs_probs) {
        load_block(logits, E, t0, rows, s.x);
        sm = block_softmax(s.x, s.p, E);
        block_probs(s.p, sm, E);
      }
      if (gating) {
        // The weights are p (unnormalized) or p renormalized over the selected set: either way
        // their Jacobian is that of a softmax over the set they span.
        for (int64_t j = 0; j < k; ++j) {
          for (int64_t l = 0; l < kLanes; ++l) {
            const bool real = l < rows;
            s.sel[j * kLanes + l] = real ? a.weights[(t0 + l) * k + j] : 0.f;
            s.sel_grad[j * kLanes + l] = real ? a.grad_weights[(t0 + l) * k + j] : 0.f;
            s.ids[j * kLanes + l] = real ? a.indices[(t0 + l) * k + j] : 0;
          }
        }
        Floats dot(0.f);
        for (int64_t j = 0; j < k; ++j) dot = dot + lanes_at(s.sel, j) * lanes_at(s.sel_grad, j);
        for (int64_t e = 0; e < E; ++e) {
          const Floats outside = a.normalize ? Floats(0.f) : softmax_grad(lanes_at(s.p, e), Floats(0.f), dot);
          outside.store(g + e * kLanes);
        }
        for (int64_t j = 0; j < k; ++j)
          softmax_grad(lanes_at(s.sel, j), lanes_at(s.sel_grad, j), dot).store(s.sel + j * kLanes);
        for (int64_t l = 0; l < rows; ++l)
          for (int64_t j = 0; j < k; ++j) g[s.ids[j * kLanes + l] * kLanes + l] = s.sel[j * kLanes + l];
      }
      if (balance) {
        Floats dot(0.f);
        for (int64_t e = 0; e < E; ++e) dot = dot + lanes_at(s.p, e) * Floats(a.routed_fraction[e]);
        const Floats scale(a.balance_scale);
        for (int64_t e = 0; e < E; ++e) {
          const Floats part = where(counted, scale * softmax_grad(lanes_at(s.p, e), Floats(a.routed_fraction[e]), dot));
          (gating ? lanes_at(g, e) + part : part).store(g + e * kLanes);
        }
      }
      if (a.z_loss) {
        const Floats token_scale = Floats(a.z_scale) * log_sum_exp(sm.max, sm.sum);
        for (int64_t e = 0; e < E; ++e) {
          const Floats part = where(counted, token_scale * lanes_at(s.p, e));
          (gating || balance ? lanes_at(g, e) + part : part).store(g + e * kLanes);
        }
      }
      store_block(g, E, t0, rows, grad_logits);
    }
  }
}

void backward(const RouterBackward& a, int64_t chunk_begin, int64_t chunk_end, void* scratch) {
  const Scratch s = carve(scratch, a.logits.experts, a.k);
  PESC_DTYPE_SWITCH(a.logits.dtype, StorageTypes, [&] { backward_chunks<scalar_t>(a, chunk_begin, chunk_end, s); });
}

const RouterKernels kRouterKernels{PESC_ROUTER_STRINGIFY(CPU_CAPABILITY), &scratch_bytes, &forward, &backward};

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace pesc

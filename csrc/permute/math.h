// Per-element math of the permutation ops (docs/design.md, "Permutation"), shared by the CPU and CUDA kernels.
//
//   permute:   the sort key of routed slot s = t*k + j is its expert id; a stable sort by key gives
//              x_perm[row_map[t, j]] = x[t], and offsets[e] = #slots with key < e. A dropped slot
//              (drop_invalid, id outside [0, E)) has key E: it sorts after every expert, so
//              offsets[E] counts the kept slots, and row_map stores ~row (< 0) for it.
//   unpermute: y[t] = residual[t] + sum_j w[t, j] * y_perm[row_map[t, j]], accumulated in fp32 in
//              the order j = 0..k-1, then the residual.
#pragma once

#include <cstdint>

#include "core/host_device.h"

namespace pesc {

// The bucket of an expert id in the permutation sort. The CPU entry point rejects ids outside
// [0, E) before sorting, so there this is the identity. The CUDA path cannot raise without a host
// sync, so it routes an invalid id to the nearest valid expert (negative -> 0, >= E -> E-1):
// every output stays a well-formed permutation with offsets[E] = N, so no op downstream can read
// out of bounds.
PESC_HD uint32_t expert_sort_key(int32_t expert, int32_t num_experts) {
  return static_cast<uint32_t>(expert < 0 ? 0 : (expert >= num_experts ? num_experts - 1 : expert));
}

// The bucket of a slot's id with drop_invalid: its expert, or E (after every expert) when the id is
// outside [0, E). Any integer width.
template <typename Id>
PESC_HD uint32_t expert_bucket_dropping(Id expert, int32_t num_experts) {
  return static_cast<uint32_t>(expert >= 0 && expert < num_experts ? expert : num_experts);
}

// The bucket of an id of any integer width without drop_invalid: expert_sort_key's clamp, applied
// before narrowing, so an int64 id beyond int32 still clamps to E - 1.
template <typename Id>
PESC_HD uint32_t expert_bucket_clamped(Id expert, int32_t num_experts) {
  return static_cast<uint32_t>(expert < 0 ? 0 : (expert >= num_experts ? num_experts - 1 : expert));
}

// row_map entry of a slot: the row it owns, or ~row (a negative value) for a dropped slot's row.
PESC_HD int32_t dropped_row_entry(int32_t row) { return ~row; }
PESC_HD bool is_dropped_entry(int32_t entry) { return entry < 0; }
// The row an entry reserves, dropped or not.
PESC_HD int32_t decoded_row(int32_t entry) { return entry < 0 ? ~entry : entry; }

// One term of the weighted combine: acc + w * v (w = 1 when the op has no weights).
PESC_HD float combine_term(float acc, float w, float v) { return acc + w * v; }

}  // namespace pesc

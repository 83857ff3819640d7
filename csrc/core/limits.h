// Library-wide size limits (torch-free, shared by validators and kernels).
#pragma once

namespace pesc {

// Largest expert count any routing or permutation op accepts: the CUDA gating kernels keep a
// token's logits in the registers of one warp (32 lanes x at most 32 values).
constexpr int kMaxExperts = 1024;

}  // namespace pesc

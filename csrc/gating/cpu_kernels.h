// The inner loops of the CPU routing ops (docs/design.md, "Routing"), behind one torch-free
// interface. They are compiled once per instruction set (cpu_kernels_default.cpp, and
// cpu_kernels_avx2.cpp on x86-64) from cpu_kernels_impl.h; cpu.cpp validates, allocates, deals
// chunks of tokens to threads and picks the instruction set at run time (router_kernels()).
//
// Layouts: logits [T, E] row-major in fp32/fp16/bf16 (math in fp32); mask [T] bool, True for tokens
// that count in the losses (nullptr: every token counts); weights and grad_weights [T, k] fp32;
// indices [T, k] int32; grad_logits [T, E] in the logits' dtype.
//
// Work comes in chunks of kTokensPerChunk consecutive tokens. One call handles the chunks
// [chunk_begin, chunk_end) and writes each chunk's partial sums to its own slot, in a fixed order
// inside the chunk; the caller adds the chunk partials in chunk order. Results therefore depend on
// T and E only, never on how the chunks are dealt to threads.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace pesc {

// A multiple of every SIMD width (8 or 16 floats), so SIMD blocks never straddle two chunks.
constexpr int64_t kTokensPerChunk = 256;

struct RouterLogits {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  int64_t tokens = 0;   // T
  int64_t experts = 0;  // E
  const bool* mask = nullptr;
};

// One pass over the logits computing any subset of: the top-k selection and its weights, and the
// per-chunk sums the balancing loss and the z-loss need. A null pointer skips that output.
struct RouterForward {
  RouterLogits logits;
  int64_t k = 0;  // > 0 with weights and indices: select the top k
  bool normalize = true;
  float* weights = nullptr;          // [T, k]
  int32_t* indices = nullptr;        // [T, k]
  float* prob_sums = nullptr;        // [chunks, E]: sum of p_te over the chunk's counted tokens
  int32_t* slot_counts = nullptr;    // [chunks, E]: the chunk's counted tokens' routed slots (needs the selection)
  float* lse_square_sums = nullptr;  // [chunks]: sum of lse_t^2 over the chunk's counted tokens
};

// One pass writing grad_logits = gating part + balance part + z part, each present when its inputs are:
//   gating (grad_weights):     d<grad_weights, weights>/dl for the top-k weights (softmax backward
//                              over the selected set when normalized, over all E otherwise)
//   balance (routed_fraction): balance_scale * p * (f - <p, f>) on counted tokens, 0 elsewhere
//   z (z_loss):                z_scale * lse_t * p on counted tokens, 0 elsewhere
struct RouterBackward {
  RouterLogits logits;
  void* grad_logits = nullptr;
  const float* grad_weights = nullptr;  // [T, k]
  const float* weights = nullptr;       // [T, k]
  const int32_t* indices = nullptr;     // [T, k], ids in [0, E)
  int64_t k = 0;
  bool normalize = true;
  const float* routed_fraction = nullptr;  // [E]: f_e
  float balance_scale = 0.f;
  bool z_loss = false;
  float z_scale = 0.f;
};

struct RouterKernels {
  const char* isa;  // the instruction set, named as ATen does: "AVX2" or "DEFAULT"
  // Bytes of scratch memory one call needs (the caller allocates it, once per thread).
  int64_t (*scratch_bytes)(int64_t experts, int64_t k);
  void (*forward)(const RouterForward& args, int64_t chunk_begin, int64_t chunk_end, void* scratch);
  void (*backward)(const RouterBackward& args, int64_t chunk_begin, int64_t chunk_end, void* scratch);
};

// Portable build: ATen's default (compiler-vectorised) Vectorized<float>.
const RouterKernels& router_kernels_default();

// AVX2 + FMA (8 fp32 lanes), built by GCC on x86-64 (cpu_kernels_avx2.cpp says how); used on CPUs
// that have them unless ATEN_CPU_CAPABILITY=default.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PESC_ROUTER_KERNELS_AVX2 1
const RouterKernels& router_kernels_avx2();
#else
#define PESC_ROUTER_KERNELS_AVX2 0
#endif

}  // namespace pesc

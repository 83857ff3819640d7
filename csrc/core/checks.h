// Generic argument checks, the building blocks of every op's validator (csrc/<family>/ops.cpp).
//
// Validators run in three places with the same code and messages: as the ops' Meta kernels (the
// fake implementations torch.compile and opcheck use), at the top of every CPU and CUDA kernel,
// and, on meta copies of the arguments, before the reference fallback on devices without kernels
// (docs/design.md, "Validation"). Sizes are read as SymInts, so the checks also hold for symbolic
// shapes under torch.compile (a comparison on a symbolic size installs a guard).
//
// Each failure raises c10::Error subclasses that Python sees as ValueError (shapes, values),
// TypeError (dtypes) or IndexError (ids out of range), with a message naming the op, the argument
// and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <string>

namespace pesc {

std::string shape_string(const at::Tensor& t);

// `op` is the public op name ("pesc.permute"), `arg` the argument name.
void check_defined(const char* op, const at::Tensor& t, const char* arg);
void check_dim(const char* op, const at::Tensor& t, int64_t dim, const char* arg, const char* layout);
void check_float_dtype(const char* op, const at::Tensor& t, const char* arg);  // fp32, fp16 or bf16
void check_dtype(const char* op, const at::Tensor& t, at::ScalarType dtype, const char* arg);
void check_same_dtype(const char* op, const at::Tensor& t, const char* arg, const at::Tensor& like,
                      const char* like_arg);
void check_same_device(const char* op, const at::Tensor& a, const char* a_arg, const at::Tensor& b, const char* b_arg);
// t.shape[dim] == expected; `what` names the expected quantity in the message.
void check_size(const char* op, const at::Tensor& t, int64_t dim, const c10::SymInt& expected, const char* arg,
                const char* what);
// A 2-D float tensor ("rows" of activations): [N, d] in fp32, fp16 or bf16.
void check_rows(const char* op, const at::Tensor& t, const char* arg, const char* layout);

// Router logits [T, E] in a float dtype with 1 <= E <= kMaxExperts (the routing families' input).
void check_router_logits(const char* op, const at::Tensor& logits);

// Reads the data (CPU tensors only): every int32 id in `ids` lies in [0, num_experts); the error
// names the first offending value and its position.
void check_expert_ids_cpu(const char* op, const at::Tensor& ids, int64_t num_experts, const char* arg);

}  // namespace pesc

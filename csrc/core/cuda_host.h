// Host-side glue for the CUDA entry points (compiled by the C++ compiler, never by nvcc): the
// current stream, and the launch check every entry point wraps its torch-free launcher in.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/tensor_utils.h"

namespace pesc {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace pesc

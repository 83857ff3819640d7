// Torch-free dtype tag passed from the host entry points to the CUDA launchers, so that .cu files
// never include ATen headers (they dominate nvcc compile time; docs/design.md, "Build").
#pragma once

namespace pesc {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

}  // namespace pesc

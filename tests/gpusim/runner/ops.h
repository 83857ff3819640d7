// The launchers the runner can call, by the name a case's `op` line gives (ops_*.cu). Each op reads
// its parameters and buffers from the case (names listed next to it in ops_*.cu and in
// tests/gpusim/cases_*.py), calls exactly the torch-free launcher under test on the default stream,
// plus the setup that launcher requires (CUB scratch sizing, the segment map), and returns the
// launcher's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "case_file.h"
#include "core/dtype.h"
#include "device_buffers.h"

namespace gpusim {

using OpFn = cudaError_t (*)(const CaseSpec&, CaseBuffers&);

// nullptr when no op has that name.
OpFn find_op(const std::string& name);

OpFn find_gating_op(const std::string& name);
OpFn find_permute_op(const std::string& name);
OpFn find_adapter_op(const std::string& name);
OpFn find_routing_op(const std::string& name);

// Parameters of the case; a missing one ends the run with a message.
int64_t int_param(const CaseSpec& c, const char* key);
float float_param(const CaseSpec& c, const char* key);
pesc::DType dtype_param(const CaseSpec& c);

}  // namespace gpusim

// The CPU routing kernels (gating/cpu_kernels_impl.h) for the baseline instruction set of the build:
// ATen's default Vectorized<float> (8 lanes held in an array, which the compiler vectorises with
// whatever the build targets), so this file runs on any CPU the extension runs on.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT

#include "gating/cpu_kernels_impl.h"

namespace pesc {

const RouterKernels& router_kernels_default() { return DEFAULT::kRouterKernels; }

}  // namespace pesc

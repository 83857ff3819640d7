// The Python module pesc_kernels._C. Importing it runs the static op registrations of every
// family (csrc/<family>/ops.cpp, cpu.cpp, cuda.cpp); the only Python-visible function is build_info(), used by
// `python -m pesc_kernels info`. Tensors never cross pybind11: ops go through torch.ops.pesc.
#include <pybind11/pybind11.h>

#ifndef PESC_CUDA_ARCHS
#define PESC_CUDA_ARCHS ""
#endif
#ifndef PESC_CUDA_VERSION
#define PESC_CUDA_VERSION ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "pesc_kernels compiled kernels (ops are registered under torch.ops.pesc)";
  m.def("build_info", [] {
    pybind11::dict info;
    info["version"] = PESC_VERSION;
    info["cuda_compiled"] = static_cast<bool>(PESC_WITH_CUDA);
    info["cuda_architectures"] = PESC_CUDA_ARCHS;
    info["cuda_toolkit_version"] = PESC_CUDA_VERSION;
    info["compiler"] = __VERSION__;
    return info;
  });
}

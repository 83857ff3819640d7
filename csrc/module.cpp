// The Python module pesc_kernels._C. Importing it runs the static op registrations of every
// family (csrc/<family>/ops.cpp, cpu.cpp, cuda.cpp). Python-visible: build_info(), used by
// `python -m pesc_kernels info`, and the controls of the reusable CPU output buffers
// (core/cpu_buffers.h). Tensors never cross pybind11: ops go through torch.ops.pesc.
#include <pybind11/pybind11.h>

#include "core/cpu_buffers.h"

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
  m.def("cpu_buffer_cache_stats", [] {
    const pesc::CpuBufferCacheStats stats = pesc::cpu_buffer_cache_stats();
    pybind11::dict info;
    info["kept_bytes"] = stats.kept_bytes;
    info["limit_bytes"] = stats.limit_bytes;
    return info;
  });
  m.def("empty_cpu_buffer_cache", &pesc::empty_cpu_buffer_cache);
  m.def("set_cpu_buffer_cache_limit", &pesc::set_cpu_buffer_cache_limit, pybind11::arg("bytes"));
}

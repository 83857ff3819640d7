"""Build pesc_kernels: setuptools drives CMake + Ninja through a build_ext subclass.

Environment:
  PESC_WITH_CUDA=auto|0|1   auto (default): compile the CUDA kernels when torch is a CUDA build and
                            nvcc is found; 1: require them (fails clearly without a toolchain); 0: CPU only.
  PESC_CUDA_ARCHS           CMake architecture list, default "80-real;90" (sm_80 and sm_90 SASS plus
                            compute_90 PTX). TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX") is honoured too.
  PESC_BUILD_DIR            CMake build directory (default build/<python>-torch<version>-<cuda|cpu>).
  CUDA_HOME / CUDA_PATH     CUDA toolkit root, otherwise /usr/local/cuda or the one nvcc lives in.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "python/pesc_kernels/_version.py").read_text()).group(1)
DEFAULT_CUDA_ARCHS = "80-real;90"


class BuildError(RuntimeError):
    pass


def _find_cuda_root():
    """Return a toolkit root holding bin/nvcc and include/cuda_runtime.h, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc_on_path = shutil.which("nvcc")
    if nvcc_on_path:
        # /usr/local/bin/nvcc may be a wrapper script, so its parent is not the toolkit root;
        # the root check below skips such candidates.
        candidates.append(str(Path(os.path.realpath(nvcc_on_path)).parent.parent))
    for root in candidates:
        if root and (Path(root) / "bin/nvcc").exists() and (Path(root) / "include/cuda_runtime.h").exists():
            return Path(root)
    return None


def _nvcc_version(cuda_root):
    out = subprocess.run([str(cuda_root / "bin/nvcc"), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _cuda_archs():
    if os.environ.get("PESC_CUDA_ARCHS"):
        return os.environ["PESC_CUDA_ARCHS"]
    torch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not torch_list:
        return DEFAULT_CUDA_ARCHS
    archs = []
    for item in re.split(r"[;\s]+", torch_list.strip()):
        if not item:
            continue
        ptx = item.endswith("+PTX")
        number = item.removesuffix("+PTX").replace(".", "")
        if not number.isdigit():
            raise BuildError(f"TORCH_CUDA_ARCH_LIST entry {item!r} is not like '8.0' or '9.0+PTX'")
        archs.append(number if ptx else f"{number}-real")
    return ";".join(archs)


def _resolve_cuda(torch):
    """Decide whether to compile the CUDA kernels; returns (enabled, cuda_root, reason)."""
    mode = os.environ.get("PESC_WITH_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise BuildError(f"PESC_WITH_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, None, "PESC_WITH_CUDA=0"
    problems = []
    cuda_root = _find_cuda_root()
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    if cuda_root is None:
        problems.append("nvcc was not found (set CUDA_HOME to a toolkit with bin/nvcc and include/cuda_runtime.h)")
    elif torch.version.cuda is not None:
        nvcc = _nvcc_version(cuda_root)
        torch_major = int(torch.version.cuda.split(".")[0])
        if nvcc is None or nvcc[0] != torch_major:
            problems.append(f"nvcc at {cuda_root} is release {nvcc} but torch was built with CUDA {torch.version.cuda}")
    if problems:
        if mode == "1":
            raise BuildError("PESC_WITH_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        print("pesc_kernels: building the CPU kernels only: " + "; ".join(problems), file=sys.stderr)
        return False, None, "; ".join(problems)
    return True, cuda_root, "ok"


def _nvidia_wheel_dirs():
    """Header and library dirs of the nvidia-* wheels torch installs (cublas_v2.h etc. live there)."""
    try:
        import nvidia
    except ImportError:
        return []
    return [
        str(p / "include")
        for base in nvidia.__path__
        for p in Path(base).iterdir()
        if (p / "include/cublas_v2.h").exists() or (p / "include/cusparse.h").exists()
    ]


def _build_tool(name):
    """cmake/ninja next to this interpreter (a venv's pip-installed ones) first, else from PATH.

    System CMake 3.25 does not know the C++20 flags for nvcc 13, so the pip cmake must win even
    when the venv is not activated.
    """
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise BuildError(f"{name} not found: pip install cmake ninja")
    return found


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11
        import torch
        from torch.utils import cpp_extension

        with_cuda, cuda_root, _ = _resolve_cuda(torch)
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        python_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
        tag = f"{python_tag}-torch{torch.__version__.split('+')[0]}-{'cuda' if with_cuda else 'cpu'}"
        build_dir = Path(os.environ.get("PESC_BUILD_DIR", ROOT / "build" / tag)).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)

        cmake = _build_tool("cmake")
        args = [
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_build_tool('ninja')}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('PESC_BUILD_TYPE', 'Release')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPESC_VERSION={VERSION}",
            f"-DPESC_TORCH_INCLUDE_DIRS={';'.join(cpp_extension.include_paths())}",
            f"-DPESC_TORCH_LIBRARY_DIRS={';'.join(cpp_extension.library_paths())}",
            f"-DPESC_TORCH_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
            f"-DPESC_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        if with_cuda:
            args += [
                f"-DCMAKE_CUDA_COMPILER={cuda_root / 'bin/nvcc'}",
                f"-DCUDAToolkit_ROOT={cuda_root}",
                f"-DCMAKE_CUDA_ARCHITECTURES={_cuda_archs()}",
                f"-DPESC_EXTRA_CUDA_INCLUDE_DIRS={';'.join(_nvidia_wheel_dirs())}",
            ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        log_path = build_dir / "build.log"
        with open(log_path, "w") as log:
            self._run([cmake, str(ROOT), *args], build_dir, log)
            self._run([cmake, "--build", ".", "--parallel", jobs], build_dir, log)
        print(f"pesc_kernels: built with CUDA={'on' if with_cuda else 'off'}; "
              f"log (with ptxas resource usage): {log_path}")

    @staticmethod
    def _run(cmd, cwd, log):
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            # ptxas -v resource lines (a few per kernel) go to the log only.
            if not line.startswith(("ptxas info", "    0 bytes stack frame")):
                sys.stdout.write(line)
        if proc.wait() != 0:
            raise BuildError(f"{cmd[0]} failed with exit code {proc.returncode}; full log in {log.name}")


setup(
    name="pesc_kernels",
    version=VERSION,
    description="Kernels and model layer for Parameter-Efficient Sparsity Crafting (PESC) mixture-of-adapters",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("pesc_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["pesc-bench=pesc_kernels.bench.__main__:main"]},
    python_requires=">=3.9",
    # The ops, the layer, crafting and checkpoints need torch and safetensors only; each extra names
    # what one feature needs, and the feature's error message names the extra.
    install_requires=["torch>=2.5", "safetensors"],
    extras_require={
        "hf": ["transformers>=4.45", "peft>=0.13", "accelerate"],
        "bench": ["tqdm", "matplotlib"],
        "examples": ["transformers>=4.45", "peft>=0.13", "accelerate", "tqdm", "matplotlib"],
        "qlora": ["transformers>=4.45", "peft>=0.13", "accelerate", "bitsandbytes>=0.50"],
        "test": ["pytest", "pytest-benchmark", "expecttest", "transformers>=4.45", "peft>=0.13", "accelerate",
                 "tqdm", "matplotlib", "bitsandbytes>=0.50"],
    },
    zip_safe=False,
)

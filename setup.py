"""Builds gradcomp's native extension by driving CMake (CMakeLists.txt is the one description).

Environment knobs:
  GRADCOMP_WITH_CUDA=0|1   force the CUDA build off/on (default: on when torch has CUDA and
                           nvcc is on PATH)
  GRADCOMP_CUDA_KERNELS=0|1  compile the torch-free CUDA kernels (default: on when nvcc is on
                           PATH, even with a CPU-only torch, so every .cu file is compile-checked)
  GRADCOMP_BUILD_TESTS=1   also build the GoogleTest binaries (run them with ctest in the
                           build directory)
  GRADCOMP_BUILD_DIR=PATH  CMake build directory (default: build/cmake in the source tree)
  GRADCOMP_BUILD_TYPE=...  CMake build type (default: Release)
  MAX_JOBS=N               parallel compile jobs (default: CPU count)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "on", "true", "yes"):
        return True
    if value.lower() in ("0", "off", "false", "no"):
        return False
    raise SystemExit(f"{name}={value!r}: expected 0/1, on/off, true/false or yes/no")


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # imported here: only the build needs it

        output_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(os.environ.get("GRADCOMP_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        with_cuda = _flag("GRADCOMP_WITH_CUDA")
        if with_cuda is None:
            with_cuda = torch.version.cuda is not None and shutil.which("nvcc") is not None
        cuda_kernels = _flag("GRADCOMP_CUDA_KERNELS")
        if cuda_kernels is None:
            cuda_kernels = with_cuda or shutil.which("nvcc") is not None
        build_tests = bool(_flag("GRADCOMP_BUILD_TESTS"))
        configure = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('GRADCOMP_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DGRADCOMP_OUTPUT_DIR={output_dir}",
            f"-DGRADCOMP_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DGRADCOMP_CUDA_KERNELS={'ON' if cuda_kernels else 'OFF'}",
            f"-DGRADCOMP_BUILD_TESTS={'ON' if build_tests else 'OFF'}",
        ]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        print(
            f"gradcomp: configuring in {build_dir} (CUDA {'on' if with_cuda else 'off'}, "
            f"CUDA kernels {'on' if cuda_kernels else 'off'}, "
            f"tests {'on' if build_tests else 'off'})",
            flush=True,
        )
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", str(build_dir), "-j", jobs])


setup(ext_modules=[CMakeExtension("gradcomp._C")], cmdclass={"build_ext": CMakeBuild})

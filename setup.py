"""Builds the compiled CPU kernels (`sdessm.compiled`) against the FFI headers that jaxlib ships;
everything else about the package is in pyproject.toml. The kernels are optional: where they fail
to build, sdessm installs without them and uses its pure-JAX recursions."""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildKernels(build_ext):
    def build_extensions(self):
        import jaxlib  # a build requirement (pyproject.toml): its include/ holds xla/ffi/api

        include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()


kalman = Extension(
    "sdessm._kalman",
    sources=["csrc/kalman.cc"],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17"],
    optional=True,
)

setup(ext_modules=[kalman], cmdclass={"build_ext": BuildKernels})

"""Build of qaudit's optional C kernels (qaudit/pipeline/_kernels.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler, ``pip install`` still succeeds
and qaudit computes the same statistics with numpy, slower (qaudit/pipeline/kernels.py).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type != "msvc":
            # -ffp-contract=off: no fused multiply-add, so a value's bin is computed
            # with exactly numpy's float32 operations (MSVC does not contract by default)
            for ext in self.extensions:
                ext.extra_compile_args += ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
        super().build_extensions()


setup(
    ext_modules=[Extension("qaudit.pipeline._kernels", ["qaudit/pipeline/_kernels.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)

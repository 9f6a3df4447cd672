"""Build the fused C augmentation kernels (fewlabels/augment/_native.c) at install time, as a shared library inside
the package: nothing is compiled, or loaded from a cache, when fewlabels runs. The library is plain C loaded through
ctypes (no Python API); without a C compiler the install still succeeds and fewlabels uses its PyTorch path."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno"]


class BuildNative(build_ext):
    """Tuned for the installing machine's CPU (-march=native) when the compiler takes it, else generic; a failed
    build leaves the package without the kernels instead of failing the install."""

    def build_extension(self, ext):
        for extra in (["-march=native"], []):
            ext.extra_compile_args = FLAGS + extra
            try:
                return super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 - any compiler failure: try generic flags, then give up
                error = e
        self.warn(f"fewlabels: the native augmentation kernels were not built ({error}); the PyTorch path is used")
        return None

    def get_export_symbols(self, ext):
        return []  # a ctypes library, not a Python module: no PyInit_ symbol to export


setup(ext_modules=[Extension("fewlabels.augment._fl_augment", ["fewlabels/augment/_native.c"], libraries=["m"],
                             optional=True)],
      cmdclass={"build_ext": BuildNative})

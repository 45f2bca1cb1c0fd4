"""Build the small C extension (the M-step's auction); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tetris_tvm._auction",
            sources=["tetris_tvm/_auction.c"],
            extra_compile_args=["-O3"],
            optional=True,  # without a C compiler the numpy auction is used
        )
    ]
)

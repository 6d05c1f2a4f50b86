"""Shared pytest setup.

TRITON_INTERPRET must be set before any module defining @triton.jit kernels is imported (triton
decides between compiled and interpreted kernels at decoration time), so it is set here, first.
Run the kernel tests compiled on a GPU with TRITON_INTERPRET=0 in the environment.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

"""Shared pytest setup.

TRITON_INTERPRET must be set before any module defining @triton.jit kernels is imported (triton
decides between compiled and interpreted kernels at decoration time), so it is decided here, first:
on a machine without CUDA the kernels run under the interpreter (TRITON_INTERPRET=1) on CPU
tensors; where CUDA is present they run compiled on the GPU (kernels.testing.kernel_device).
An explicit TRITON_INTERPRET in the environment always wins.
"""

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

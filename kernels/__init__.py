"""Triton kernels for ECHO's verification step, each with a pure-torch reference of identical semantics.

    kernels.tree_attention  ragged draft trees attending to their KV prefix under ancestor masks
    kernels.tree_verify     greedy and lossless-sampling acceptance walks over ragged trees
    kernels.select          echo's gated global top-B super-tree selection (= echo_sim.trees.supertree_select)
    kernels.tree_masks      64-bit ancestor masks from parent arrays

Import from the submodules (`from kernels.tree_attention import tree_attention`); the package does
not re-export, so `kernels.tree_attention` always names the module. Importing any kernel module
decides compiled vs interpreted kernels: set TRITON_INTERPRET=1 before the first import to run them
on CPU tensors (tests do, via tests/conftest.py).
"""

from kernels._launch import KernelInputError

__all__ = ["KernelInputError"]

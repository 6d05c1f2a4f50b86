"""Triton kernels for ECHO's verification step, each with a pure-torch reference of identical semantics.

    tree_attention  ragged draft trees attending to their KV prefix under ancestor masks
    tree_verify     greedy and lossless-sampling acceptance walks over ragged trees
    select          echo's gated global top-B super-tree selection (= echo_sim.trees.supertree_select)

Importing this package decides compiled vs interpreted kernels: set TRITON_INTERPRET=1 before the
first import to run them on CPU tensors (tests do, via tests/conftest.py).
"""

from kernels._launch import KernelInputError
from kernels.select import SelectResult, SelectTrees, plan_select, supertree_select, supertree_select_reference
from kernels.tree_attention import (
    TreeAttentionBatch, plan_tree_attention, tree_attention, tree_attention_reference,
)
from kernels.tree_masks import ancestor_masks
from kernels.tree_verify import (
    VerifyResult, VerifyTrees, greedy_verify, greedy_verify_reference, plan_verify, sample_verify,
    sample_verify_reference,
)

__all__ = [
    "KernelInputError", "SelectResult", "SelectTrees", "TreeAttentionBatch", "VerifyResult", "VerifyTrees",
    "ancestor_masks", "greedy_verify", "greedy_verify_reference", "plan_select", "plan_tree_attention",
    "plan_verify", "sample_verify", "sample_verify_reference", "supertree_select", "supertree_select_reference",
    "tree_attention", "tree_attention_reference",
]

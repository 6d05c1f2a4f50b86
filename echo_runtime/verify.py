"""The verified trees of one step and the greedy acceptance walk over them.

Request r verifies its root (the last committed token, not yet in the target's KV cache) and the
draft nodes the policy selected, in lattice (level) order, so a parent always precedes its child.
Verify-local index 0 is the root; index i ≥ 1 is the (i−1)-th selected node. Positions are the
prefix length + depth (the root has depth 0), i.e. prefix length + depth − 1 counting the root in
the prefix. Padding tokens (graph-bucket filler) hang off the root and are never accepted.

Greedy acceptance (exact for greedy decoding): starting at the root, follow the selected child
whose token equals the target's argmax at the current node; stop when there is none. The bonus
token is the target's argmax at the last accepted node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from echo_runtime.forward import TreeRow

PADDING_PARENT = 0  # padding tokens are children of the root, masked to root + themselves


@dataclass(frozen=True)
class VerifyTree:
    """One request's verified tokens.

    Shape (m = 1 + selected + padding): nodes int64 [selected] (lattice-local node indices);
    tokens, parent (verify-local, -1 for the root), depth int64 [m]. Padding occupies the last
    m − 1 − selected entries and is never accepted.
    """

    nodes: np.ndarray
    tokens: np.ndarray
    parent: np.ndarray
    depth: np.ndarray

    @property
    def selected(self) -> int:
        return len(self.nodes)

    def row(self, slot: int, root_position: int) -> TreeRow:
        m = len(self.tokens)
        visible = np.zeros((m, m), dtype=bool)
        visible[np.arange(m), np.arange(m)] = True
        for i in range(1, m):  # parents precede children: copy the parent's ancestor row
            visible[i] |= visible[self.parent[i]]
        return TreeRow(slot=slot, tokens=self.tokens, positions=root_position + self.depth,
                       scratch_index=np.arange(m, dtype=np.int64), visible=visible)


def build_tree(root_token: int, nodes: np.ndarray, node_token: np.ndarray, node_parent: np.ndarray,
               node_depth: np.ndarray, padding: int = 0) -> VerifyTree:
    """Verified tree of one request from its selected lattice nodes (local indices, any order).

    node_token/parent/depth are the request's whole lattice (parent local, -1 = root child)."""
    nodes = np.sort(np.asarray(nodes, dtype=np.int64))
    local = np.full(len(node_token) + 1, -1, dtype=np.int64)  # lattice node -> verify index
    local[nodes] = 1 + np.arange(len(nodes))
    parents = np.asarray(node_parent, dtype=np.int64)[nodes]
    verify_parent = np.where(parents < 0, 0, local[np.maximum(parents, 0)])
    if np.any(verify_parent < 0):
        raise ValueError("selection is not prefix-closed: a selected node's parent is not selected")
    return VerifyTree(
        nodes=nodes,
        tokens=np.concatenate(([root_token], np.asarray(node_token)[nodes], [root_token] * padding)).astype(np.int64),
        parent=np.concatenate(([-1], verify_parent, [PADDING_PARENT] * padding)).astype(np.int64),
        depth=np.concatenate(([0], np.asarray(node_depth)[nodes], [1] * padding)).astype(np.int64),
    )


def greedy_walk(tree: VerifyTree, argmax: np.ndarray) -> tuple[np.ndarray, int]:
    """(accepted verify-local indices in depth order, bonus token). Shape: argmax int [m]."""
    limit = 1 + tree.selected
    parent, tokens = tree.parent[:limit], tree.tokens[:limit]
    path, current = [], 0
    while True:
        match = np.flatnonzero((parent == current) & (tokens == argmax[current]))
        if len(match) == 0:
            return np.asarray(path, dtype=np.int64), int(argmax[current])
        current = int(match[0])
        path.append(current)


def walk_all(trees: list[VerifyTree], argmax, use_kernel: bool = False) -> list[tuple[np.ndarray, int]]:
    """Greedy walks of every request. argmax: int tensor [Σ m_r] (padding included), on any device.

    use_kernel: kernels.tree_verify's greedy walk on the argmax's device (same semantics: the lowest
    matching child index wins, which never matters here since siblings carry distinct tokens)."""
    if not use_kernel:
        host = argmax.cpu().numpy()
        bounds = np.cumsum([0] + [len(t.tokens) for t in trees])
        return [greedy_walk(tree, host[a:b]) for tree, a, b in zip(trees, bounds, bounds[1:])]
    from kernels.tree_verify import greedy_verify, plan_verify

    device = argmax.device
    sizes = [1 + t.selected for t in trees]
    starts = np.cumsum([0] + [len(t.tokens) for t in trees])[:-1]
    keep = np.concatenate([start + np.arange(size) for start, size in zip(starts, sizes)])
    as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    plan = plan_verify(as_tensor(np.concatenate(([0], np.cumsum(sizes))), torch.int32),
                       as_tensor(np.concatenate([t.parent[:s] for t, s in zip(trees, sizes)]), torch.int32),
                       as_tensor(np.concatenate([t.tokens[:s] for t, s in zip(trees, sizes)]), torch.int64))
    result = greedy_verify(plan, argmax[as_tensor(keep, torch.int64)])
    accepted, lengths = result.accepted.cpu().numpy(), result.accepted_len.cpu().numpy()
    bonus = result.bonus_token.cpu().numpy()
    return [(accepted[r, : lengths[r]].astype(np.int64), int(bonus[r])) for r in range(len(trees))]

"""Shared launcher plumbing for the Triton kernels: interpreter detection and argument checks.

`INTERPRET` is read once, at import, exactly when `@triton.jit` decides between a compiled and an
interpreted kernel, so the launchers and the kernels always agree. Under the interpreter the
kernels run on CPU tensors; compiled, they need CUDA tensors.
"""

from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


class KernelInputError(ValueError):
    """A kernel launcher got an argument of the wrong shape, dtype, device or value."""


def next_pow2(value: int) -> int:
    return 1 if value <= 1 else 1 << (int(value) - 1).bit_length()


def check_device(tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """All tensors on one device that the kernels can run on; returns that device."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) != 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise KernelInputError(f"all tensors must be on one device, got {listing}")
    device = devices.pop()
    if INTERPRET and device.type != "cpu":
        raise KernelInputError(f"TRITON_INTERPRET=1 runs kernels on CPU tensors, got {device}")
    if not INTERPRET and device.type != "cuda":
        raise KernelInputError(
            f"Triton kernels need CUDA tensors (got {device}); set TRITON_INTERPRET=1 before "
            "importing kernels to run them on CPU, or use the *_reference functions"
        )
    return device


def check_tensor(name: str, tensor, *, ndim: int, dtypes: tuple, shape: tuple | None = None) -> None:
    """Raise KernelInputError unless `tensor` has `ndim` dims, a dtype in `dtypes` and `shape`.

    `shape` entries that are None are not checked.
    """
    if not isinstance(tensor, torch.Tensor):
        raise KernelInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise KernelInputError(f"{name} must have {ndim} dims, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise KernelInputError(f"{name} must have dtype in ({names}), got {tensor.dtype}")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, tensor.shape)):
            if want is not None and want != got:
                raise KernelInputError(
                    f"{name} has shape {tuple(tensor.shape)}: dim {axis} must be {want}"
                )


def check_offsets(name: str, offsets: torch.Tensor, total: int, max_count: int | None = None) -> int:
    """Validate CSR offsets [bs + 1] over `total` items (one host sync); return the largest count.

    Offsets must start at 0, end at `total` and be non-decreasing; counts must be >= 1 and at
    most `max_count` when given.
    """
    check_tensor(name, offsets, ndim=1, dtypes=INDEX_DTYPES)
    if offsets.numel() < 2:
        raise KernelInputError(f"{name} must hold at least 2 entries (one request), got {offsets.numel()}")
    host = offsets.detach().to("cpu", torch.int64)
    counts = host[1:] - host[:-1]
    if int(host[0]) != 0 or int(host[-1]) != total:
        raise KernelInputError(f"{name} must run from 0 to {total}, got {int(host[0])} … {int(host[-1])}")
    if bool((counts < 1).any()):
        row = int(torch.nonzero(counts < 1)[0])
        raise KernelInputError(f"{name}: request {row} has {int(counts[row])} items, need >= 1")
    largest = int(counts.max())
    if max_count is not None and largest > max_count:
        row = int(torch.argmax(counts))
        raise KernelInputError(f"{name}: request {row} has {largest} items, at most {max_count} supported")
    return largest


def check_local_parents(name: str, parents: torch.Tensor, offsets: torch.Tensor, root_first: bool) -> None:
    """Parents are local indices earlier in the same request (level order); one host sync.

    root_first=True: local position 0 is the root (parent -1) and every other position has a parent
    in [0, own index). root_first=False: parent -1 means child of an implicit root, else [0, own index).
    """
    check_tensor(name, parents, ndim=1, dtypes=INDEX_DTYPES)
    host_offsets = offsets.detach().to("cpu", torch.int64)
    local = torch.arange(parents.numel()) - torch.repeat_interleave(host_offsets[:-1], host_offsets.diff())
    host = parents.detach().to("cpu", torch.int64)
    if root_first:
        ok = torch.where(local == 0, host == -1, (host >= 0) & (host < local))
    else:
        ok = (host >= -1) & (host < local)
    if not bool(ok.all()):
        node = int(torch.nonzero(~ok)[0])
        request = int(torch.searchsorted(host_offsets, node, right=True)) - 1
        rule = "root at local 0 with parent -1, others in [0, own index)" if root_first else "in [-1, own index)"
        raise KernelInputError(
            f"{name}[{node}] = {int(host[node])} (request {request}, local {int(local[node])}) breaks "
            f"level order: parents must be {rule}"
        )

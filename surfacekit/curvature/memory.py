"""Memory of curvature computations: estimate before allocating, size the Krylov workspace, refuse clearly.

Every vector of P float64 numbers takes 8 P bytes. A Krylov eigensolver holds ``basis`` vectors,
one block of ``block`` products and the locked eigenvectors: 8 x (locked + basis + block) x P
bytes beyond what the Hessian-vector product itself needs. A dense Hessian takes 8 P^2 bytes and
``eigvalsh`` about as much again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import MemoryLimitError

FLOAT64_BYTES = 8
# Default size of a Krylov basis plus its block (soft: it sets the default basis and block, never
# refuses). Chosen so that a top-1 eigenvalue at P = 5e6 stays under 1 GB all told.
DEFAULT_WORKSPACE_BYTES = 512 * 2**20
MIN_BLOCKS = 3  # a thick-restart basis holds at least the kept block, the current block and the next


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for new tensors on ``device``, in bytes.

    CUDA: ``torch.cuda.mem_get_info``. CPU: the kernel's ``MemAvailable`` (Linux), lowered to the
    room left under a cgroup (container) limit if there is one; ``sysconf`` where /proc is absent.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = _meminfo_available()
    room = _cgroup_room()
    if room is not None:
        free = min(free, room)
    return free


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62


def _cgroup_room() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(int(limit) - int(used), 0)


def gib(nbytes: float) -> str:
    """``nbytes`` as a short human-readable GiB string."""
    return f"{nbytes / 2**30:.3g} GiB"


def require_memory(nbytes: int, what: str, device: torch.device | str = "cpu", memory_limit: int | None = None) -> None:
    """Raise :class:`MemoryLimitError` before allocating if ``nbytes`` exceed ``memory_limit``.

    ``memory_limit`` (bytes) defaults to :func:`available_bytes` of ``device``. ``what`` says what
    the memory is for (and how the estimate was made); it starts the message.
    """
    limit = available_bytes(device) if memory_limit is None else int(memory_limit)
    if nbytes > limit:
        source = "free on this machine" if memory_limit is None else "allowed by memory_limit"
        raise MemoryLimitError(f"{what} needs about {gib(nbytes)}, more than the {gib(limit)} {source}; "
                               "refused before allocating")


def krylov_workspace(
    size: int,
    block: int,
    basis_size: int | None,
    default_basis: int,
    locked_max: int,
    what: str,
    device: torch.device | str = "cpu",
    memory_limit: int | None = None,
) -> tuple[int, int]:
    """Choose (block, basis) for a block Krylov solver on vectors of ``size`` float64 entries.

    Defaults: ``basis = default_basis`` (from k and the block) rounded up to whole blocks, shrunk so
    that basis plus one block take at most :data:`DEFAULT_WORKSPACE_BYTES`; when even
    ``MIN_BLOCKS`` blocks do not fit that, the block is halved until they do (down to 1). An
    explicit ``basis_size`` is used as given (at least ``MIN_BLOCKS`` blocks). Then the whole
    workspace, 8 x (locked_max + basis + block) x size bytes, must fit ``memory_limit`` (default:
    the free memory of ``device``), else :class:`MemoryLimitError` is raised before any allocation.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    block = min(block, size)
    if basis_size is not None:
        basis = max(int(basis_size), MIN_BLOCKS * block)
    else:
        rows = DEFAULT_WORKSPACE_BYTES // (FLOAT64_BYTES * size)
        while block > 1 and (MIN_BLOCKS + 1) * block > rows:
            block //= 2
        wanted = -(-max(default_basis, MIN_BLOCKS * block) // block) * block
        basis = max(min(wanted, rows - block), MIN_BLOCKS * block)
    need = FLOAT64_BYTES * (locked_max + basis + block) * size
    require_memory(need, f"{what}: {locked_max} locked + {basis} basis + {block} block vectors of P = {size:,} "
                         f"float64 numbers (8 x vectors x P bytes)", device, memory_limit)
    return block, basis

"""MPI parallel training: ownership of subdomains, halo exchange, reductions, devices.

Ranks own rectangular blocks of the subdomain grid.  A rank holds the parameters
of its own subdomains plus a halo (the neighbours' subdomains whose support
reaches into its cells) and the collocation points of its cells.  Each step:

1. where the halo copies may differ from their owners (the first step, after an L-BFGS
   step, a resumed run), owners send the current parameters to the ranks that hold
   copies (non-blocking point-to-point on contiguous numpy buffers);
2. every rank computes the loss on its points, divided by the global point count,
   and back-propagates;
3. in an Adam step, every rank that holds a subdomain sums its gradient over the
   ranks that hold it, in rank order (the same bits everywhere); in an L-BFGS step,
   halo gradients go back to their owners and are added to theirs; levels that are
   replicated on every rank (a single subdomain, coarse levels) and learnable
   constants of the problem have their gradients summed with Allreduce;
4. every rank steps its optimiser: after an Adam step the halo copies have moved as
   their owners did (a checkpoint step copies the owners' parameters and moments into
   them, which a vectorised update may round differently in the last bit).

With grid points the result equals the one-process run up to rounding.  Without
mpi4py, or with one rank, :class:`Context` is a serial stand-in and nothing here
communicates.  Used by :mod:`fbpinn.trainer` and the CLI.
"""

from __future__ import annotations

import logging
import math
import os
import sys

import numpy as np
import torch

from .domains import Box
from .model import parameter_key, stacked_parameters
from .signals import collective

logger = logging.getLogger(__name__)


class Context:
    """The communicator, this process's rank and size, and its node-local rank."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.local_rank, self.local_size = 0, 1
        if comm is not None and self.size > 1:
            from mpi4py import MPI

            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()

    @classmethod
    def from_environment(cls) -> "Context":
        """MPI's world communicator when mpi4py imports and more than one rank runs.

        Raises :class:`LaunchError` when a launcher started several processes that MPI
        does not join into one job (each would train alone and write the same files)."""
        launched = launched_tasks()
        try:
            from mpi4py import MPI
        except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py found no MPI library to load
            if launched:
                name, n = launched
                raise LaunchError(f"started as one of {n} processes ({name}={n}) but mpi4py is not usable "
                                  f"({e}); install it with the MPI runtime (pip install mpi4py mpich) or "
                                  "build it against the MPI of this launcher") from None
            return cls(None)
        comm = MPI.COMM_WORLD
        if comm.Get_size() == 1 and launched:
            name, n = launched
            library = MPI.Get_library_version().strip().splitlines()[0]
            if name.startswith("SLURM"):
                hint = ("srun started the tasks without an MPI plugin that this MPI understands (as with "
                        "srun --mpi=none); use srun --mpi=pmi2 (or pmix), or mpiexec inside the allocation")
            else:
                hint = "start the job with the mpiexec of that MPI, or rebuild mpi4py against the launcher's"
            raise LaunchError(f"started as one of {n} processes ({name}={n}) but MPI reports a job of 1 rank: "
                              f"mpi4py uses {library}, not the MPI of this launcher; {hint}")
        return cls(comm if comm.Get_size() > 1 else None)

    @property
    def parallel(self) -> bool:
        return self.size > 1

    # ---------------------------------------------------------------- reductions
    def allreduce(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over ranks of a float64 numpy array."""
        if not self.parallel:
            return array
        from mpi4py import MPI

        out = np.empty_like(array)
        with collective():
            self.comm.Allreduce(np.ascontiguousarray(array), out, op=MPI.SUM)
        return out

    def iallreduce(self, array: np.ndarray):
        """Start the elementwise sum over ranks of a float64 numpy array without waiting for it;
        returns a function that waits and returns the sum (every rank must call it, in the same
        order as the other collectives)."""
        if not self.parallel:
            return lambda: array
        from mpi4py import MPI

        buffers = (np.ascontiguousarray(array), np.empty_like(array))  # alive until the wait
        request = self.comm.Iallreduce(buffers[0], buffers[1], op=MPI.SUM)

        def wait() -> np.ndarray:
            with collective():
                request.Wait()
            return buffers[1]

        return wait

    def allgather_sum(self, array: np.ndarray) -> np.ndarray:
        """The sum over ranks of a float64 numpy array, taken in rank order by every rank: the same
        bits everywhere, whatever reduction order the MPI library would choose."""
        if not self.parallel:
            return array
        array = np.ascontiguousarray(array, dtype=np.float64)
        out = np.empty((self.size,) + array.shape, dtype=np.float64)
        with collective():
            self.comm.Allgather(array, out)
        total = out[0].copy()
        for part in out[1:]:
            total += part
        return total

    def allreduce_grads(self, tensors) -> None:
        """Sum the ``.grad`` of each tensor over ranks, in place."""
        if not self.parallel or not tensors:
            return
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
        flat = torch.cat([g.reshape(-1) for g in grads]).detach().cpu().numpy()
        summed = torch.from_numpy(self.allreduce(flat))
        offset = 0
        for t, g in zip(tensors, grads):
            n = g.numel()
            t.grad = summed[offset:offset + n].view_as(g).to(g.device, g.dtype).clone()
            offset += n

    def gather(self, obj):
        """``comm.gather`` to rank 0 (a list there, None elsewhere)."""
        if not self.parallel:
            return [obj]
        with collective():
            return self.comm.gather(obj, root=0)

    def first_error(self, message):
        """Agree on errors found before training: every rank passes its message (or None)
        and every rank gets the first one raised anywhere (or None), so that all stop together."""
        if not self.parallel:
            return message
        with collective():
            messages = self.comm.allgather(message)
        return next((m for m in messages if m is not None), None)

    def bcast(self, obj):
        if not self.parallel:
            return obj
        with collective():
            return self.comm.bcast(obj, root=0)

    def barrier(self) -> None:
        if self.parallel:
            with collective():
                self.comm.Barrier()

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` tagged with this rank and end every rank of the job."""
        print(f"fbpinn: rank {self.rank}/{self.size}: {message}", file=sys.stderr, flush=True)
        if self.parallel:
            import time

            time.sleep(1.0)  # let the launcher forward the message before the job is torn down
            self.comm.Abort(code)
        sys.exit(code)


class LaunchError(RuntimeError):
    """The launcher and mpi4py disagree on how many processes the job has."""


# Set by launchers in every process they start: MPICH's and Intel MPI's hydra and Slurm's
# PMI-2 (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE), and srun
# for the tasks of a job step whatever its --mpi plugin (SLURM_STEP_NUM_TASKS; unset in the
# batch script itself).
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def launched_tasks() -> tuple[str, int] | None:
    """(variable, processes) when a launcher says this process is one of several, else None."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return name, int(value)
    return None


def configure_threads(ctx: Context, threads: int) -> int:
    """Torch CPU threads: the config's value, else OMP_NUM_THREADS, else the node's cores
    divided by its ranks (all cores for one process).

    Also flushes denormal floats to zero: window tails and tiny Adam moments produce them
    in float32, and arithmetic on them is up to a hundred times slower on x86 CPUs.
    A malformed OMP_NUM_THREADS raises ConfigError (see :func:`fbpinn.config.omp_num_threads`)."""
    from .config import omp_num_threads

    torch.set_flush_denormal(True)
    omp = omp_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    elif omp is not None:
        torch.set_num_threads(omp)
    elif ctx.local_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_size))
    return torch.get_num_threads()


def select_device(ctx: Context, preference: str = "auto") -> torch.device:
    """One GPU per rank (node-local rank mod visible GPUs) where CUDA exists, else the CPU.

    ``preference`` "cpu" forces the CPU; "cuda" raises if no GPU is visible."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("training.device", "'cuda' but torch sees no CUDA device on this node")
    if torch.cuda.is_available():
        device = torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


# --------------------------------------------------------------------------- partition
def rank_grid(shape, n_ranks: int, axes=None) -> list[int]:
    """Ranks per axis: a factorisation of ``n_ranks`` over the split ``axes`` that keeps
    blocks as even as possible (largest subdomain counts get the most ranks)."""
    axes = list(range(len(shape))) if axes is None else list(axes)
    dims = [1] * len(shape)
    for p in _prime_factors(n_ranks):
        # Give the factor to the split axis with the most subdomains per rank left.
        best = max(axes, key=lambda d: (shape[d] / dims[d], -d))
        dims[best] *= p
    for d in range(len(shape)):
        if dims[d] > shape[d]:
            raise ValueError(f"cannot split {shape[d]} subdomains along axis {d} over {dims[d]} ranks "
                             f"({n_ranks} ranks, subdomain grid {list(shape)}); use fewer ranks")
    return dims


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return sorted(out, reverse=True)


class Partition:
    """Blocks of a level's subdomain grid, one per rank, with regions and halos.

    Parameters
    ----------
    level : the :class:`fbpinn.decomposition.Level` to split.
    n_ranks : number of ranks.
    axes : axes to split along (default: all).
    """

    def __init__(self, level, n_ranks: int, axes=None):
        self.level = level
        self.dims = rank_grid(level.shape, n_ranks, axes)
        self.n_ranks = n_ranks
        # chunks[d][p] = (first, last + 1) subdomain index along axis d for rank coordinate p
        self.chunks = [[(int(c[0]), int(c[-1]) + 1) for c in np.array_split(np.arange(n), p)]
                       for n, p in zip(level.shape, self.dims)]
        ids = np.arange(level.n_subdomains).reshape(level.shape)
        self.owner = np.zeros(level.n_subdomains, dtype=np.int64)
        for r in range(n_ranks):
            self.owner[ids[self._block(r)].ravel()] = r
        self._halos = {}  # rank -> halo(rank)

    def coords(self, rank: int) -> list[int]:
        return list(np.unravel_index(rank, self.dims))

    def _block(self, rank: int):
        return tuple(slice(*self.chunks[d][p]) for d, p in enumerate(self.coords(rank)))

    def owned(self, rank: int) -> list[int]:
        return np.flatnonzero(self.owner == rank).tolist()

    def region(self, rank: int):
        """The cells of ``rank``: a box and, per axis, whether its upper face is closed
        (only at the domain's upper edge, so each point belongs to exactly one rank)."""
        lo, hi, closed = [], [], []
        for d, p in enumerate(self.coords(rank)):
            axis = self.level.axes[d]
            a, b = self.chunks[d][p]
            c = axis.centres.tolist()
            lo.append(axis.lo if a == 0 else 0.5 * (c[a - 1] + c[a]))
            hi.append(axis.hi if b == axis.n else 0.5 * (c[b - 1] + c[b]))
            closed.append(b == axis.n)
        return Box(lo, hi), closed

    def halo(self, rank: int) -> list[int]:
        """Subdomains of other ranks whose open support meets this rank's region (computed once per rank)."""
        if rank not in self._halos:
            self._halos[rank] = self._halo(rank)
        return list(self._halos[rank])

    def held(self, rank: int) -> set[int]:
        """The subdomains ``rank`` holds: its own and its halo."""
        return set(self.owned(rank)) | set(self.halo(rank))

    def _halo(self, rank: int) -> list[int]:
        box, _ = self.region(rank)
        per_axis = []
        for d, axis in enumerate(self.level.axes):
            c = axis.centres
            near = (c - axis.half_width < box.hi[d]) & (c + axis.half_width > box.lo[d])
            per_axis.append(np.flatnonzero(near.numpy()))
        mesh = np.meshgrid(*per_axis, indexing="ij")
        flat = np.ravel_multi_index([m.ravel() for m in mesh], self.level.shape)
        return sorted(int(j) for j in flat if self.owner[j] != rank)

    def reaches_beyond_neighbours(self) -> bool:
        """True when some rank's halo includes subdomains of a non-adjacent rank block."""
        for r in range(self.n_ranks):
            mine = np.array(self.coords(r))
            for j in self.halo(r):
                other = np.array(self.coords(int(self.owner[j])))
                if np.abs(other - mine).max() > 1:
                    return True
        return False


class HaloExchange:
    """Point-to-point exchange of halo parameters (owner -> holder) and of halo
    gradients (holder -> owner) for one level's :class:`fbpinn.networks.StackedMLP`."""

    TAG_PARAMS, TAG_GRADS, TAG_SUM = 11, 12, 13

    def __init__(self, ctx: Context, partition: Partition, net):
        self.ctx, self.net = ctx, net
        rank = ctx.rank
        held = net.held.tolist()
        slot = {g: i for i, g in enumerate(held)}
        own = set(partition.owned(rank))
        # What I send: my subdomains in others' halos.  What I receive: my halo, by owner.
        self.send = {}
        for q in range(ctx.size):
            if q != rank:
                ids = [j for j in partition.halo(q) if j in own]
                if ids:
                    self.send[q] = torch.tensor([slot[j] for j in ids])
        self.recv = {}
        for j in partition.halo(rank):
            self.recv.setdefault(int(partition.owner[j]), []).append(slot[j])
        self.recv = {r: torch.tensor(s) for r, s in self.recv.items()}
        self.halo_slots = torch.tensor(sorted(s for v in self.recv.values() for s in v.tolist()), dtype=torch.long)
        # For summing gradients on every holder: per other rank, the subdomains both hold, by id.
        mine = partition.held(rank)
        self.shared = {}
        for q in range(ctx.size):
            both = sorted(mine & partition.held(q)) if q != rank else []
            if both:
                self.shared[q] = torch.tensor([slot[j] for j in both])

    def tensors(self) -> list:
        """The exchanged tensors: the level's stacked weights and biases."""
        return list(self.net.weights) + list(self.net.biases)

    def _pack(self, tensors, slots) -> np.ndarray:
        # Buffers keep the parameters' dtype: float32 runs send half the bytes of float64 ones.
        return torch.cat([t[slots.to(t.device)].reshape(-1) for t in tensors]).detach().cpu().numpy()

    @staticmethod
    def _pieces(buf: np.ndarray, tensors, n_slots: int):
        """The part of ``buf`` that belongs to each of ``tensors``, as tensors of ``n_slots`` rows."""
        offset = 0
        for t in tensors:
            shape = (n_slots,) + tuple(t.shape[1:])
            n = math.prod(shape)
            yield torch.from_numpy(buf[offset:offset + n]).view(shape).to(t.device, t.dtype)
            offset += n

    def _unpack(self, buf: np.ndarray, tensors, slots, add: bool) -> None:
        for t, part in zip(tensors, self._pieces(buf, tensors, len(slots))):
            if add:
                t.index_add_(0, slots.to(t.device), part)
            else:
                t.index_copy_(0, slots.to(t.device), part)

    def _transfer(self, outgoing: dict, incoming: dict, tensors, tag: int) -> tuple[dict, int]:
        """Send ``outgoing[q]`` slots of ``tensors`` to q and receive ``incoming[r]`` slots from r; returns
        the received buffers by rank and the bytes sent."""
        from mpi4py import MPI

        per_slot = sum(math.prod(t.shape[1:]) for t in tensors)
        dtype = torch.empty(0, dtype=tensors[0].dtype).numpy().dtype
        recv_bufs = {r: np.empty(len(s) * per_slot, dtype=dtype) for r, s in incoming.items()}
        reqs = [self.ctx.comm.Irecv(buf, source=r, tag=tag) for r, buf in recv_bufs.items()]
        send_bufs = {q: self._pack(tensors, s) for q, s in outgoing.items()}
        reqs += [self.ctx.comm.Isend(buf, dest=q, tag=tag) for q, buf in send_bufs.items()]
        with collective():
            MPI.Request.Waitall(reqs)
        return recv_bufs, sum(b.nbytes for b in send_bufs.values())

    def _exchange(self, outgoing: dict, incoming: dict, tensors, tag: int, add: bool) -> int:
        """Send ``outgoing[q]`` slots of ``tensors`` to q and receive ``incoming[r]`` from r, which
        replace (or with ``add``, are added to) those slots."""
        recv_bufs, sent = self._transfer(outgoing, incoming, tensors, tag)
        for r, buf in recv_bufs.items():
            self._unpack(buf, tensors, incoming[r], add)
        return sent

    @torch.no_grad()
    def params(self) -> int:
        """Refresh halo copies from their owners; returns bytes sent."""
        return self._exchange(self.send, self.recv, [t.data for t in self.tensors()], self.TAG_PARAMS, add=False)

    @torch.no_grad()
    def moments(self, tensors) -> int:
        """Refresh halo copies of ``tensors`` (shaped like the parameters: Adam's moments) from their
        owners; returns bytes sent."""
        return self._exchange(self.send, self.recv, [t.data for t in tensors], self.TAG_PARAMS, add=False)

    def _grads(self) -> list:
        tensors = self.tensors()
        for t in tensors:
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        return [t.grad for t in tensors]

    @torch.no_grad()
    def grads_everywhere(self) -> int:
        """Sum each held subdomain's gradient over the ranks that hold it, on every one of them: each
        rank sends its part of the subdomains it shares with a neighbour and adds the parts it
        receives in rank order, so that the owner and every holder find the same sum to the bit.
        An optimiser step then moves a halo copy as its owner moves the original, and the next step
        needs no exchange of parameters: one exchange per step instead of two.  Returns bytes sent."""
        grads = self._grads()
        received, sent = self._transfer(self.shared, self.shared, grads, self.TAG_SUM)
        parts = {r: list(self._pieces(buf, grads, len(self.shared[r]))) for r, buf in received.items()}
        for i, g in enumerate(grads):
            total = torch.zeros_like(g)
            for r in sorted([self.ctx.rank, *parts]):
                if r == self.ctx.rank:
                    total += g
                else:
                    total.index_add_(0, self.shared[r].to(g.device), parts[r][i])
            g.copy_(total)
        return sent

    @torch.no_grad()
    def grads(self) -> int:
        """Return halo gradients to their owners, who add them; returns bytes sent."""
        grads = self._grads()
        sent = self._exchange(self.recv, self.send, grads, self.TAG_GRADS, add=True)
        for g in grads:  # halo gradients now live with their owners
            g.index_fill_(0, self.halo_slots.to(g.device), 0.0)
        return sent


class Distribution:
    """How one run is spread over the ranks of ``ctx``: which subdomains of each level
    this rank holds, which points it takes, and the communication each step needs.

    The finest level (most subdomains) is split into blocks when it has enough
    subdomains along the split axes for every rank and no halo reaches past a
    neighbouring block.  Every other level -- coarse levels of a multilevel
    decomposition, whose subdomains reach across many blocks -- and a finest level
    that cannot be split are replicated: every rank holds all of it and their
    gradients are summed with Allreduce.  With nothing split, the points are divided
    into equal slabs of the domain along its longest axis.
    """

    def __init__(self, ctx: Context, levels, axes=None):
        self.ctx = ctx
        self.partition = None
        self.exchange = None
        self.halo_stale = True  # halo copies may differ from their owners' parameters (refresh_halo)
        self.split = max(range(len(levels)), key=lambda i: (levels[i].n_subdomains, i))  # the finest level
        box = levels[0].box
        self.held = [list(range(lv.n_subdomains)) for lv in levels]
        if not ctx.parallel:
            self.region, self.closed = box, [True] * box.dim
            return
        level = levels[self.split]
        try:
            partition = Partition(level, ctx.size, axes)
            if partition.reaches_beyond_neighbours():
                raise ValueError("halo reaches past the neighbouring blocks")
            self.partition = partition
        except ValueError as e:
            logger.info("replicating the %d subdomain(s) on every rank (%s)", level.n_subdomains, e)
        if self.partition is not None:
            self.held[self.split] = sorted(self.partition.owned(ctx.rank) + self.partition.halo(ctx.rank))
            self.region, self.closed = self.partition.region(ctx.rank)
        else:
            d = int(np.argmax(np.asarray(box.hi) - np.asarray(box.lo)))
            edges = np.linspace(box.lo[d], box.hi[d], ctx.size + 1)
            lo, hi = list(box.lo), list(box.hi)
            lo[d], hi[d] = float(edges[ctx.rank]), float(edges[ctx.rank + 1])
            self.region = Box(lo, hi)
            self.closed = [True] * box.dim
            self.closed[d] = ctx.rank == ctx.size - 1

    def is_split(self, level: int) -> bool:
        """Whether ``level`` is divided among the ranks (else every rank holds all of it)."""
        return self.partition is not None and level == self.split

    def attach(self, nets) -> None:
        """Set up the halo exchange for the split level's network."""
        if self.partition is not None:
            self.exchange = HaloExchange(self.ctx, self.partition, nets[self.split])

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the points of ``x`` (N, d) that belong to this rank."""
        if not self.ctx.parallel:
            return torch.ones(x.shape[0], dtype=torch.bool)
        return self.region.contains(x.double(), self.closed)

    def refresh_halo(self) -> int:
        """Copy the owners' parameters into the halo copies where they may differ (see
        :meth:`reduce_gradients`); returns bytes sent."""
        if self.exchange is None or not self.halo_stale:
            return 0
        self.halo_stale = False
        return self.exchange.params()

    def resync_halo(self, moments) -> int:
        """The owners' parameters and Adam's ``moments`` (lists of tensors shaped like the split level's
        parameters) in the halo copies: a halo copy that follows its owner through summed gradients
        may differ from it in the last bit (an optimiser's vectorised loop can round an element
        differently at another position), and a checkpoint holds the owners' values, so a run
        resynchronises where it writes one and goes on exactly as a run resumed from it.  Returns
        bytes sent."""
        if self.exchange is None:
            return 0
        self.halo_stale = False
        return self.exchange.params() + sum(self.exchange.moments(m) for m in moments)

    def reduce_gradients(self, nets, shared, everywhere: bool = False) -> int:
        """Halo gradients to their owners, or with ``everywhere`` each held subdomain's gradient summed on
        every rank that holds it (an optimiser step then keeps the halo copies equal to their owners:
        the next step exchanges no parameters); replicated tensors' gradients summed everywhere."""
        if not self.ctx.parallel:
            return 0
        sent = 0
        if self.exchange is not None:
            sent = self.exchange.grads_everywhere() if everywhere else self.exchange.grads()
            self.halo_stale = not everywhere
        replicated = list(shared)
        for i, net in enumerate(nets):
            if not self.is_split(i):
                replicated += list(net.parameters())
        self.ctx.allreduce_grads(replicated)
        return sent

    def owned_slots(self, level: int, net) -> torch.Tensor:
        """Local slots of the subdomains of ``level`` this rank owns.  A replicated level is
        reported by rank 0 alone, so that gathering collects every subdomain exactly once."""
        if not self.is_split(level):
            return torch.arange(net.n_held) if self.ctx.rank == 0 else torch.zeros(0, dtype=torch.long)
        mine = set(self.partition.owned(self.ctx.rank))
        return torch.tensor([i for i, g in enumerate(net.held.tolist()) if g in mine], dtype=torch.long)

    def gather_stacked(self, level: int, net, tensors: dict) -> dict | None:
        """Full arrays of per-subdomain ``tensors`` (name -> (J_held, ...) tensor) of one level,
        assembled from their owners on rank 0 (indexed by global subdomain); None elsewhere."""
        slots = self.owned_slots(level, net)
        local = {"ids": net.held[slots].numpy()}
        for key, t in tensors.items():
            local[key] = t.detach()[slots.to(t.device)].cpu().numpy()
        parts = self.ctx.gather(local)
        if parts is None:
            return None
        n = sum(len(p["ids"]) for p in parts)
        out = {}
        for key in tensors:
            full = np.zeros((n,) + parts[0][key].shape[1:], dtype=parts[0][key].dtype)
            for p in parts:
                full[p["ids"]] = p[key]
            out[key] = full
        return out

    def gather_parameters(self, nets) -> dict | None:
        """Full stacked parameter arrays of every level on rank 0 ("level0/W0", ...); None elsewhere."""
        out = {}
        for level, net in enumerate(nets):
            tensors = {name: t for lv, name, t in stacked_parameters(nets) if lv == level}
            full = self.gather_stacked(level, net, tensors)
            if full is not None:
                out.update({parameter_key(level, k): v[:, 0, 0] if k.startswith("b") else v for k, v in full.items()})
        return out if self.ctx.rank == 0 else None

"""The cross-batch memory of partners: a FIFO queue of earlier samples, kept in ``state_dict``.

:func:`memory_enqueue_` is the in-place FIFO update (one ``index_copy_`` per queue, no host
synchronisation); :class:`PartnerMemory` is the base class of the graph modules that keep such
a queue (:class:`~ccg_layers.LearnableSampleGraph`, :class:`~ccg_layers.PatchHashGraph`,
:class:`~ccg_layers.RelationGraphs`): its queues are persistent buffers, allocated at the first
enqueue, and a resumed run continues bit-identically.

The backward of a relation loss needs the partner maps its forward read. A module enqueues its
batch right after the forward by default, so its forward passes the function a copy of the map
queue (one pass over the memory a step). With ``defer_enqueue=True`` the forward keeps the batch
instead and passes the queue itself; :func:`commit_memories` (after ``backward()``) enqueues it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ccg_layers.config import values_checkable
from ccg_layers.contrast import check_margin
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError
from ccg_layers.validation import (
    check_dtype,
    check_flag,
    check_float_dtype,
    check_shape,
    check_tensor,
    positive_int,
)

__all__ = ["PartnerMemory", "commit_memories", "gatherable", "memory_enqueue_"]


def _enqueue(
    memory: Sequence[Tensor], pointer: Tensor, count: Tensor, entries: Sequence[Tensor]
) -> None:
    size = memory[0].shape[0]
    n = entries[0].shape[0]
    keep = min(n, size)  # a batch larger than the queue: only its last `size` entries stay
    with torch.no_grad():
        steps = torch.arange(n - keep, n, device=pointer.device)
        index = torch.remainder(pointer + steps, size)
        for buf, entry in zip(memory, entries, strict=True):
            buf.index_copy_(0, index.to(buf.device), entry[n - keep :].detach().to(buf.dtype))
        pointer.copy_(torch.remainder(pointer + n, size))
        count.copy_(torch.clamp(count + n, max=size))


def _tensors(value: object, name: str) -> Sequence[Tensor]:
    """``value`` if it is a list or tuple (of tensors, checked one by one by the caller)."""
    if not isinstance(value, (list, tuple)):
        raise CCGDTypeError(
            f"`{name}` must be a list or tuple of tensors (one per queue), got "
            f"{type(value).__name__}."
        )
    return value


def memory_enqueue_(
    memory: Sequence[Tensor], pointer: Tensor, count: Tensor, entries: Sequence[Tensor]
) -> None:
    """Push a batch into a FIFO memory of partners, in place, without a host synchronisation.

    ``memory`` are parallel queues of ``S`` slots (e.g. feature maps and their codes),
    ``pointer`` the next slot to write and ``count`` how many slots are filled (``()`` int64
    tensors). The ``n`` entries go to slots ``pointer, pointer + 1, ...`` modulo ``S`` with
    one ``index_copy_`` per queue (the oldest are overwritten); with ``n > S`` only the last
    ``S`` stay. Detached; converted to each queue's dtype. The entries are stored as they are
    (NaN included): a memory keeps what it is given, the losses that read it check it.

    Args:
        memory: Queues, each ``(S, ...)``.
        pointer: ``()`` int64, updated to ``(pointer + n) % S``.
        count: ``()`` int64, updated to ``min(count + n, S)``.
        entries: One ``(n, ...)`` tensor per queue.

    Raises:
        CCGShapeError: No queue, a queue without slots, queues with different ``S``, an entry
            not ``(n, ...)`` like its queue, or ``pointer`` / ``count`` not ``()``.
        CCGDTypeError: ``memory`` or ``entries`` not a list or tuple of tensors, or
            non-integer ``pointer`` / ``count``.
        CCGValueRangeError: With the value checks on, ``pointer`` outside ``[0, S)`` or
            ``count`` outside ``[0, S]``.

    Example:
        >>> import torch
        >>> queue, ptr, count = torch.zeros(3, 1), torch.tensor(2), torch.tensor(0)
        >>> memory_enqueue_([queue], ptr, count, [torch.tensor([[1.0], [2.0]])])
        >>> queue.flatten(), ptr, count
        (tensor([2., 0., 1.]), tensor(1), tensor(2))
    """
    queues, batch = _tensors(memory, "memory"), _tensors(entries, "entries")
    if not queues:
        raise CCGShapeError("`memory` must hold at least one queue, got an empty sequence.")
    if len(queues) != len(batch):
        raise CCGShapeError(
            f"`entries` must hold one tensor per queue of `memory` ({len(queues)}), got "
            f"{len(batch)}."
        )
    for name, t in (("pointer", pointer), ("count", count)):
        check_tensor(t, name)
        check_dtype(t, name, ("int",))
        check_shape(t, name, ())
    size = n = 0
    for i, (buf, entry) in enumerate(zip(queues, batch, strict=True)):
        check_tensor(buf, f"memory[{i}]")
        check_tensor(entry, f"entries[{i}]")
        if i == 0 and (buf.dim() == 0 or buf.shape[0] == 0):
            raise CCGShapeError(
                f"`memory[0]` must have shape (S, ...) with S >= 1 slots, got shape "
                f"{tuple(buf.shape)}."
            )
        if i == 0:
            size, n = int(buf.shape[0]), int(entry.shape[0]) if entry.dim() else 0
        elif buf.dim() == 0 or buf.shape[0] != size:
            raise CCGShapeError(
                f"`memory[{i}]` must have shape (S, ...) with S={size} slots like `memory[0]`, "
                f"got shape {tuple(buf.shape)}."
            )
        if entry.dim() == 0 or tuple(entry.shape) != (n, *buf.shape[1:]):
            batch_size = " the batch size" if i == 0 else f"={n} like `entries[0]`"
            raise CCGShapeError(
                f"`entries[{i}]` must have shape (n, {', '.join(map(str, buf.shape[1:]))}) "
                f"with n{batch_size}, got shape {tuple(entry.shape)}."
            )
    if values_checkable() and bool(
        (pointer < 0) | (pointer >= size) | (count < 0) | (count > size)
    ):
        p, c = int(pointer), int(count)
        name, value, interval = (
            ("pointer", p, f"[0, {size})") if not 0 <= p < size else ("count", c, f"[0, {size}]")
        )
        raise CCGValueRangeError(
            f"`{name}` must be in {interval} for a memory of S={size} slots, got {value}."
        )
    _enqueue(queues, pointer, count, batch)


def gatherable(x: Tensor) -> Tensor:
    """``x`` as a collective can send it: bool becomes float32 (gloo's collectives take no bool)."""
    if isinstance(x, Tensor) and x.dtype == torch.bool:
        return x.to(torch.float32)
    return x


class PartnerMemory(nn.Module):
    """A FIFO queue of earlier samples (partners only, never anchors), as persistent buffers.

    Subclasses name their parallel queues in ``_queues`` (the feature maps first) and call
    :meth:`init_memory` in their constructor. The queues are allocated at the first
    :meth:`enqueue_memory` (their entry shape is that of the first batch) and saved in
    ``state_dict`` with the pointer and the fill count, so a resumed run continues
    bit-identically. The memory is the module's own state: it is checked here
    (:meth:`check_memory_entry`), the inputs by the public functions. A forward passes
    :meth:`memory_inputs` to its function and hands its batch to :meth:`push_batch`: enqueued
    at once, or with ``defer_enqueue`` kept until :meth:`commit_memory` (after the backward).

    Example:
        >>> import torch
        >>> class Queue(PartnerMemory):
        ...     _queues = ("memory_features",)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.init_memory(3, None, None)
        >>> q = Queue()
        >>> q.enqueue_memory([torch.ones(2, 4)], [torch.float32])
        >>> q.memory_valid(), q.memory_tensors()[0].shape
        (tensor([ True,  True, False]), torch.Size([3, 4]))
    """

    _queues: tuple[str, ...] = ()
    memory_size: int
    contrast_margin: float | None = None
    defer_enqueue: bool = False
    _pending: tuple[tuple[Tensor, ...], tuple[torch.dtype, ...]] | None = None

    def init_memory(
        self,
        memory_size: int,
        memory_dtype: torch.dtype | None,
        device: Any,
        defer_enqueue: bool = False,
    ) -> None:
        """Register the pointer, the fill count and the (empty) queues; ``memory_size=0``: none.

        ``defer_enqueue``: a training forward keeps its batch for :meth:`commit_memory`
        instead of enqueuing it (and so needs no copy of the map queue).
        """
        self.memory_size = positive_int(memory_size, "memory_size", allow_zero=True)
        self.defer_enqueue = check_flag(defer_enqueue, "defer_enqueue")
        self._pending = None
        check_float_dtype(memory_dtype, "memory_dtype")
        self.memory_dtype = memory_dtype
        if self.memory_size == 0:
            return
        self.register_buffer("memory_pointer", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long, device=device))
        for name in self._queues:
            self.register_buffer(name, torch.zeros(0, device=device))

    def _queue(self, name: str) -> Tensor:
        buf = self._buffers[name]
        assert buf is not None
        return buf

    def _allocated(self) -> bool:
        return self.memory_size > 0 and self._queue(self._queues[0]).shape[0] == self.memory_size

    def memory_valid(self) -> Tensor | None:
        """``(memory_size,)`` bool, the filled slots; ``None`` while the memory is empty/off."""
        if not self._allocated():
            return None
        count = self._buffers["memory_count"]
        assert count is not None
        return torch.arange(self.memory_size, device=count.device) < count

    def reset_memory(self) -> None:
        """Empty the memory (e.g. between training and an evaluation on other data)."""
        self._pending = None
        if self.memory_size == 0:
            return
        for name in ("memory_pointer", "memory_count"):
            self._queue(name).zero_()
        for name in self._queues:
            self._buffers[name] = torch.zeros(0, device=self._queue(name).device)

    def memory_tensors(self) -> tuple[Tensor, ...] | None:
        """The queues (``(memory_size, ...)`` each), ``None`` while the memory is empty/off."""
        return tuple(self._queue(name) for name in self._queues) if self._allocated() else None

    def memory_inputs(self) -> tuple[Tensor, ...] | None:
        """The queues as a forward passes them to its function (``None`` while empty/off).

        :meth:`memory_tensors`, with the map queue (the first) copied where an enqueue follows
        the forward (training mode without ``defer_enqueue``): the backward needs the maps the
        forward read, and that enqueue overwrites the oldest of them in place.
        """
        memory = self.memory_tensors()
        if memory is None or self.defer_enqueue or not self.training:
            return memory
        return (memory[0].clone(), *memory[1:])

    def push_batch(self, entries: Sequence[Tensor], dtypes: Sequence[torch.dtype]) -> None:
        """What a training forward does with its batch: enqueue it (or keep it, deferred).

        With ``defer_enqueue`` the batch waits for :meth:`commit_memory`.
        """
        if not self.defer_enqueue:
            self.enqueue_memory(entries, dtypes)
            return
        if self._pending is not None:
            raise RuntimeError(  # an order of calls, not an input
                f"{type(self).__name__}(defer_enqueue=True): a training forward must be "
                "followed by `commit_memory()` (or `ccg_layers.commit_memories(model)`) after "
                "its backward before the next one, got two forwards without it."
            )
        self._pending = (tuple(e.detach() for e in entries), tuple(dtypes))

    def commit_memory(self) -> None:
        """Enqueue the batch the last training forward kept (``defer_enqueue``).

        Call it after that forward's ``backward()``; a no-op when nothing is pending.
        """
        if self._pending is not None:
            entries, dtypes = self._pending
            self._pending = None
            self.enqueue_memory(entries, dtypes)

    def init_contrast(self, contrast_margin: float | None) -> None:
        """``contrast_margin`` (call before :meth:`init_memory`): the memory also queues labels.

        The contrast form (beyond the paper, :mod:`ccg_layers.contrast`): the queue
        ``memory_image_labels`` keeps each partner's multi-hot labels (float32).
        """
        self.contrast_margin = (
            None if contrast_margin is None else check_margin(contrast_margin, "contrast_margin")
        )
        if self.contrast_margin is not None:
            self._queues = (*type(self)._queues, "memory_image_labels")

    def check_contrast_inputs(self, image_labels: object, name: str) -> None:
        """Image labels go with the module's ``contrast_margin``: required with it, else refused.

        Only their presence is the module's to check (its configuration); what they hold is
        validated by the function the forward calls.
        """
        if self.contrast_margin is None:
            if image_labels is not None:
                raise CCGValueRangeError(
                    f"`{name}` is only used with `contrast_margin` set (the contrast form), "
                    "got it with contrast_margin=None."
                )
            return
        if image_labels is None:
            raise CCGShapeError(
                f"`{name}` (n, C) multi-hot image labels are required with "
                f"contrast_margin={self.contrast_margin}, got None."
            )

    def check_memory_labels(self, image_labels: object, name: str) -> None:
        """The labels of a batch must have the classes of the labels in the memory."""
        if self.contrast_margin is None or not self._allocated():
            return
        if not isinstance(image_labels, Tensor) or image_labels.dim() != 2:
            return  # not (n, C): the function names the error
        held = int(self._queue("memory_image_labels").shape[1])
        if image_labels.shape[1] != held:
            raise CCGShapeError(
                f"`{name}` must have shape (n, {held}) like the image labels already in the "
                f"memory, got shape {tuple(image_labels.shape)} (call `reset_memory()` to "
                "change the classes)."
            )

    def memory_labels(self) -> Tensor | None:
        """The ``(memory_size, C)`` label queue of the contrast form; ``None`` without one."""
        if self.contrast_margin is None or not self._allocated():
            return None
        return self._queue("memory_image_labels")

    def check_memory_entry(self, features: Tensor, name: str) -> None:
        """The maps of a batch must have the shape of the maps in the memory."""
        if not self._allocated():
            return
        held = self._queue(self._queues[0]).shape[1:]
        if tuple(features.shape[1:]) != tuple(held):
            raise CCGShapeError(
                f"`{name}` must have shape (n, {', '.join(map(str, held))}) like the feature "
                f"maps already in the memory, got shape {tuple(features.shape)} (call "
                "`reset_memory()` to change the map size)."
            )

    def enqueue_memory(self, entries: Sequence[Tensor], dtypes: Sequence[torch.dtype]) -> None:
        """Push one ``(n, ...)`` batch per queue (see :func:`memory_enqueue_`), allocating first."""
        if not self._allocated():
            pointer = self._queue("memory_pointer")
            for name, entry, dtype in zip(self._queues, entries, dtypes, strict=True):
                self._buffers[name] = torch.zeros(
                    (self.memory_size, *entry.shape[1:]), dtype=dtype, device=pointer.device
                )
        queues = [self._queue(name) for name in self._queues]
        # the module's own queues, pointer and count, and entries checked against them
        # (check_memory_entry) or made by the library: no second validation
        _enqueue(queues, self._queue("memory_pointer"), self._queue("memory_count"), entries)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._pending = None  # a batch kept before the load belongs to the state replaced
        # the queues are allocated lazily: adopt the saved shape and dtype before copying
        for name in self._queues if self.memory_size else ():
            saved = state_dict.get(prefix + name)
            current = self._queue(name)
            if (
                isinstance(saved, Tensor)
                and saved.dim() > 0
                and saved.shape[0]
                not in (
                    0,
                    self.memory_size,
                )
            ):
                error_msgs.append(
                    f"{prefix}{name}: the saved memory has {saved.shape[0]} slots, this "
                    f"module has memory_size={self.memory_size}."
                )
                continue
            if isinstance(saved, Tensor) and (
                saved.shape != current.shape or saved.dtype != current.dtype
            ):
                self._buffers[name] = torch.empty(
                    saved.shape, dtype=saved.dtype, device=current.device
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def commit_memories(module: nn.Module) -> None:
    """Enqueue what every partner memory in ``module`` kept from its training forward.

    Modules built with ``defer_enqueue=True`` (:class:`~ccg_layers.RelationGraphs`,
    :class:`~ccg_layers.LearnableSampleGraph`, :class:`~ccg_layers.PatchHashGraph`) keep
    their batch instead of enqueuing it in the forward, so the forward needs no copy of the
    memory; call this after each ``backward()`` (any module tree, e.g. a whole model or its
    DDP wrapper). The memory then holds exactly what it holds without ``defer_enqueue``.

    Example:
        >>> import torch
        >>> from ccg_layers import LearnableSampleGraph
        >>> lsg = LearnableSampleGraph(in_channels=8, memory_size=4, defer_enqueue=True)
        >>> x = torch.randn(2, 8, 4, 4, requires_grad=True)
        >>> lsg(x).backward()
        >>> int(lsg.memory_count)  # kept, not yet enqueued
        0
        >>> commit_memories(lsg)
        >>> int(lsg.memory_count)
        2

    Raises:
        CCGDTypeError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise CCGDTypeError(
            f"`module` must be a torch.nn.Module (e.g. the model), got {type(module).__name__}."
        )
    for m in module.modules():
        if isinstance(m, PartnerMemory):
            m.commit_memory()

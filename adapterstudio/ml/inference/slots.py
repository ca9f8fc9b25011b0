"""Slots on the device and the host tier behind them: where adapters live when not on disk.

A *slot* is a PEFT LoRA adapter whose parameters are views into one contiguous buffer
per dtype, allocated at the largest rank in the session (smaller ranks are zero-padded,
which changes nothing). Loading an adapter into a slot is one read of its file plus one
copy; bringing one back from host memory is one buffer copy per dtype.

The host tier keeps up to ``max_host`` evicted adapters in host memory (pinned when the
device is CUDA): a slot's packed buffers, or a PEFT state dict for adapters that do not
use slots. Spare packed buffers are pooled by layout so cycling adapters does not
allocate pinned memory again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from adapterstudio.ml.inference.adapters import LORA_A, LORA_B, AdapterEntry
from adapterstudio.ml.inference.weights import read_safetensors

Layout = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]  # (file key, shape, dtype) per view
_POOL_LAYOUTS = 8  # spare host buffers are kept for this many layouts at most
_POOL_PER_KEY = 2


class Slot:
    """A PEFT LoRA adapter whose parameters are views of contiguous per-dtype buffers."""

    def __init__(self, name: str, rank: int, lora_modules: tuple[str, ...], other_keys: tuple[str, ...]) -> None:
        self.name = name
        self.rank = rank
        self.lora_modules = lora_modules
        self.other_keys = other_keys
        self.bufs: dict[torch.dtype, torch.Tensor] = {}
        self.views: dict[str, torch.Tensor] = {}  # file key -> view in a buffer
        self.layers: list[tuple[str, Any]] = []  # (module path, LoRA layer)
        self.occupant: str | None = None
        self.scale_factor = 1.0
        self.live_scalings: torch.Tensor | None = None  # the live slot of a compiled session: scalings as a tensor

    @property
    def layout(self) -> Layout:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in self.views.items())

    def fits(self, e: AdapterEntry) -> bool:
        return (e.fast and e.rank <= self.rank and set(e.lora_modules) <= set(self.lora_modules)
                and e.other_keys == self.other_keys)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.bufs.values())

    def scale(self, e: AdapterEntry, factor: float) -> None:
        """Set each layer's scaling to the adapter's own alpha/r times *factor* (a blend weight, or 1)."""
        for mod, layer in self.layers:
            layer.scaling[self.name] = e.scalings.get(mod, 0.0) * factor
        self.scale_factor = factor

    def make_live(self, device: torch.device) -> None:
        """Turn the scalings into one tensor (after ``prepare_model_for_compiled_hotswap``), changed in place."""
        self.live_scalings = torch.zeros(len(self.layers), dtype=torch.float32, device=device)
        for i, (_, layer) in enumerate(self.layers):
            layer.scaling[self.name] = self.live_scalings[i]

    def copy_from(self, slot: Slot, e: AdapterEntry) -> None:
        """Swap *slot*'s adapter into this live slot in place (nothing recompiles).

        Not PEFT's ``hotswap_adapter_from_state_dict``: it copies tensor by tensor and checks
        the configs on every call; a slot shares the live slot's layout, so the swap is one
        copy per buffer plus one small copy of the scalings.
        """
        assert self.live_scalings is not None
        for dt, b in self.bufs.items():
            b.copy_(slot.bufs[dt], non_blocking=True)
        vec = torch.tensor([e.scalings.get(m, 0.0) for m, _ in self.layers], dtype=torch.float32)
        self.live_scalings.copy_(vec, non_blocking=True)


def bind_slot(slot: Slot, peft_model: Any, device: torch.device) -> None:
    """Re-point the slot's PEFT parameters at views of one contiguous buffer per dtype."""
    tag = f".{slot.name}."
    params: list[tuple[str, torch.nn.Module, str, torch.Tensor]] = []
    for pname, p in peft_model.named_parameters():
        if tag not in pname and not pname.endswith(f".{slot.name}"):
            continue
        key = pname.replace(f".modules_to_save.{slot.name}.", ".").replace(tag, ".")
        mod_name, _, attr = pname.rpartition(".")
        params.append((key, peft_model.get_submodule(mod_name), attr, p))
    totals: dict[torch.dtype, int] = {}
    for _, _, _, p in params:
        totals[p.dtype] = totals.get(p.dtype, 0) + p.numel()
    slot.bufs = {dt: torch.zeros(n, dtype=dt, device=device) for dt, n in totals.items()}
    offs = dict.fromkeys(totals, 0)
    views: dict[str, torch.Tensor] = {}
    for key, module, attr, p in sorted(params, key=lambda x: x[0]):
        dt = p.dtype
        v = slot.bufs[dt][offs[dt]: offs[dt] + p.numel()].view(p.shape)
        offs[dt] += p.numel()
        if p.device.type != "meta":
            v.copy_(p.detach())  # keeps a head's original values where an adapter has none
        setattr(module, attr, torch.nn.Parameter(v, requires_grad=False))
        views[key] = v
    slot.views = views
    base = peft_model.base_model.model
    slot.layers = [(m, base.get_submodule(m)) for m in slot.lora_modules]


@dataclass
class HostEntry:
    kind: str  # "slot": packed buffers in a slot layout; "sd": a PEFT state dict
    layout: Layout = ()
    bufs: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        if self.kind == "slot":
            return sum(b.numel() * b.element_size() for b in self.bufs.values())
        return sum(t.numel() * t.element_size() for t in self.state_dict.values())


class SlotCache:
    """The device slots (by PEFT adapter name) and the host tier (by adapter name, LRU)."""

    def __init__(self, device: torch.device, max_host: int) -> None:
        self.device = device
        self.max_host = max_host
        self.slots: dict[str, Slot] = {}
        self.host: OrderedDict[str, HostEntry] = OrderedDict()
        self._pool: dict[tuple[Layout, torch.dtype], list[torch.Tensor]] = {}

    # -- the host tier ---------------------------------------------------------------------
    def wants_host(self, name: str) -> bool:
        """Whether an evicted *name* should be kept in host memory (there is room and it is not there)."""
        return self.max_host > 0 and name not in self.host

    def put_host(self, name: str, h: HostEntry) -> None:
        if self.max_host == 0:
            self._free_host(h)
            return
        old = self.host.pop(name, None)
        if old is not None and old is not h:
            self._free_host(old)
        self.host[name] = h
        while len(self.host) > self.max_host:
            _, dropped = self.host.popitem(last=False)
            self._free_host(dropped)

    def touch_host(self, name: str) -> None:
        self.host.move_to_end(name)

    def drop_host(self, name: str) -> None:
        self.host.pop(name, None)

    def clear_host(self) -> None:
        """Empty the host tier and its pool of spare buffers."""
        self.host.clear()
        self._pool.clear()

    def host_bytes(self) -> int:
        return sum(h.nbytes() for h in self.host.values())

    def _alloc_host(self, layout: Layout, numel: int, dtype: torch.dtype) -> torch.Tensor:
        pool = self._pool.get((layout, dtype))
        if pool:
            return pool.pop()
        return torch.empty(numel, dtype=dtype, pin_memory=self.device.type == "cuda")

    def _free_host(self, h: HostEntry) -> None:
        if h.kind != "slot":
            return
        for dt, b in h.bufs.items():
            pool = self._pool.setdefault((h.layout, dt), [])
            if len(pool) < _POOL_PER_KEY:
                pool.append(b)
        # bound the pool: only layouts still in use keep spare buffers
        if len(self._pool) > _POOL_LAYOUTS:
            for k in list(self._pool)[:-_POOL_LAYOUTS]:
                del self._pool[k]

    # -- slots -----------------------------------------------------------------------------
    def free_slot_for(self, e: AdapterEntry) -> Slot | None:
        return next((s for s in self.slots.values() if s.occupant is None and s.fits(e)), None)

    def unused_slots(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.occupant is None]

    def slot_bytes(self) -> int:
        return sum(s.nbytes() for s in self.slots.values())

    def release(self, name: str, slot: Slot, keep_host: bool) -> None:
        """*name* leaves *slot*; its packed buffers go to the host tier when *keep_host* and there is room."""
        if keep_host and self.wants_host(name):
            h = HostEntry("slot", layout=slot.layout)
            for dt, b in slot.bufs.items():
                hb = self._alloc_host(h.layout, b.numel(), dt)
                hb.copy_(b)
                h.bufs[dt] = hb
            self.put_host(name, h)
        elif name in self.host:
            self.host.move_to_end(name)
        slot.occupant = None

    def fill(self, slot: Slot, e: AdapterEntry, *, scale: bool) -> Literal["host", "disk", "repacked"]:
        """Load *e* into *slot* from the host tier or its file; return where it came from.

        *scale*: set the layers' scalings (not under compile, where the live slot's are read).
        """
        h = self.host.get(e.name)
        source: Literal["host", "disk", "repacked"]
        if h is not None and h.kind == "slot" and h.layout == slot.layout:
            for dt, b in slot.bufs.items():
                b.copy_(h.bufs[dt], non_blocking=True)  # one copy per buffer
            self.host.move_to_end(e.name)
            source = "host"
            if self.device.type == "cuda":  # the pinned source may be recycled right after
                torch.cuda.current_stream(self.device).synchronize()
        else:
            if h is not None and h.kind == "slot":
                tensors, source = _unpack(h), "repacked"
            else:
                tensors, source = read_safetensors(e.weights, e.header), "disk"
            if self.device.type == "cuda":
                # pack into pinned host memory, then one copy to the device; the packed
                # buffer is the adapter's host-tier entry
                layout = slot.layout
                hb = {dt: self._alloc_host(layout, b.numel(), dt) for dt, b in slot.bufs.items()}
                _pack(_views_like(slot, hb), tensors)
                for dt, b in slot.bufs.items():
                    b.copy_(hb[dt], non_blocking=True)
                torch.cuda.current_stream(self.device).synchronize()
                self.put_host(e.name, HostEntry("slot", layout=layout, bufs=hb))
            else:
                _pack(slot.views, tensors)
        slot.occupant = e.name
        if scale:
            slot.scale(e, 1.0)
        else:
            slot.scale_factor = 1.0
        return source


def _unpack(h: HostEntry) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    offs: dict[torch.dtype, int] = {}
    for key, shape, dt in h.layout:
        n = math.prod(shape)
        o = offs.get(dt, 0)
        out[key] = h.bufs[dt][o: o + n].view(shape)
        offs[dt] = o + n
    return out


def _views_like(slot: Slot, bufs: dict[torch.dtype, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    offs: dict[torch.dtype, int] = {}
    for key, v in slot.views.items():
        dt = v.dtype
        o = offs.get(dt, 0)
        out[key] = bufs[dt][o: o + v.numel()].view(v.shape)
        offs[dt] = o + v.numel()
    return out


def _pack(views: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Copy an adapter's tensors into slot views, zero-padding ranks below the slot's."""
    for key, dst in views.items():
        src = tensors.get(key)
        if src is None:
            if ".lora_" in key:
                dst.zero_()
            continue
        if key.endswith("." + LORA_A):
            r = src.shape[0]
            dst[:r].copy_(src)
            if r < dst.shape[0]:
                dst[r:].zero_()
        elif key.endswith("." + LORA_B):
            r = src.shape[1]
            dst[:, :r].copy_(src)
            if r < dst.shape[1]:
                dst[:, r:].zero_()
        else:
            dst.copy_(src)

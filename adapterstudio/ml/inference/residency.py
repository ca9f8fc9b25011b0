"""The device tier of the adapter cache: which adapters are loaded as PEFT adapters over the base.

:class:`Residency` wraps the base in a PEFT model, keeps up to ``max_resident`` adapters
in it (least recently used evicted first, to the host tier of the :class:`SlotCache`),
and loads each adapter into a slot or through PEFT's own loader. Which of the resident
adapters run is the session's business: after any change to the PEFT model it calls
``on_change`` so the session can point the layers at its mode again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from adapterstudio.core.errors import InvalidInput, NotFound
from adapterstudio.ml.inference.adapters import AdapterEntry
from adapterstudio.ml.inference.layers import adapter_layers, quiet_peft_wrap, strip_adapter_layers
from adapterstudio.ml.inference.slots import HostEntry, Slot, SlotCache, bind_slot


class Residency:
    """Adapters resident on the device, by catalogue name, as PEFT adapters over one base model."""

    def __init__(self, model: Any, device: torch.device, adapters: dict[str, AdapterEntry], cache: SlotCache, *,
                 max_resident: int, slot_rank: int | None, on_change: Callable[[], None]) -> None:
        self.model = model
        self.device = device
        self.adapters = adapters  # the session's attached adapters (read only here)
        self.cache = cache
        self.max_resident = max_resident
        self._slot_rank_hint = slot_rank
        self._on_change = on_change
        self.resident: OrderedDict[str, str] = OrderedDict()  # adapter -> PEFT adapter name (slot/generic)
        self.peft: Any = None  # the PEFT model wrapping the base (None until an adapter was loaded)
        self.family: str | None = None  # the peft_type of every adapter in it
        self.tuner_layers: list[Any] = []
        self.aux: list[Any] = []
        self.compiled: Any = None  # the torch.compile'd PEFT model, with its live slot
        self.live: Slot | None = None
        self.stats = {"disk_loads": 0, "host_loads": 0, "evictions": 0, "switches": 0}
        self._counter = 0

    def entry(self, name: str) -> AdapterEntry:
        try:
            return self.adapters[name]
        except KeyError:
            raise NotFound(f"Adapter {name!r} is not attached to this session.") from None

    # -- making adapters resident ---------------------------------------------------------
    def make_resident(self, name: str) -> str:
        """Make *name* resident on the device; return its PEFT adapter name."""
        e = self.entry(name)
        if name in self.resident:
            self.resident.move_to_end(name)
            return self.resident[name]
        self._ensure_family(e)
        if e.fast:
            slot = self._slot_for(e)
            source = self.cache.fill(slot, e, scale=self.compiled is None)
            if source != "repacked":
                self.stats[f"{source}_loads"] += 1
            peft_name = slot.name
        else:
            while len(self.resident) >= self.max_resident:
                self.evict(next(iter(self.resident)))
            peft_name = self._load_generic(e)
        self.resident[name] = peft_name
        return peft_name

    def forget(self, name: str) -> None:
        """Drop *name* from both tiers (its weights are read from disk next time)."""
        if name in self.resident:
            self.evict(name, keep_host=False)
        self.cache.drop_host(name)

    def evict(self, name: str, keep_host: bool = True, delete: bool = True) -> None:
        peft_name = self.resident.pop(name)
        self.stats["evictions"] += 1
        slot = self.cache.slots.get(peft_name)
        if slot is not None:
            self.cache.release(name, slot, keep_host)
            return
        if keep_host and self.cache.wants_host(name) and self.peft is not None:
            from peft import get_peft_model_state_dict

            sd = get_peft_model_state_dict(self.peft, adapter_name=peft_name)
            self.cache.put_host(name, HostEntry("sd", state_dict={k: v.detach().to("cpu", copy=True)
                                                                  for k, v in sd.items()}))
        if delete and self.peft is not None:
            self._delete_peft_adapter(peft_name)

    def _ensure_family(self, e: AdapterEntry) -> None:
        if self.family is not None and self.family != e.family:
            if self.compiled is not None:
                raise InvalidInput(f"Adapter {e.name!r} is {e.peft_type}; a compiled session swaps LoRA adapters only.")
            self.unwrap()
        self.family = e.family

    def _load_generic(self, e: AdapterEntry) -> str:
        from peft import PeftModel, set_peft_model_state_dict

        name = self._new_name("peft")
        h = self.cache.host.get(e.name)
        if h is not None and h.kind == "sd":
            self._wrap_with(name, self._peft_config(e), low_cpu=False)
            set_peft_model_state_dict(self.peft, {k: v.to(self.device) for k, v in h.state_dict.items()},
                                      adapter_name=name)
            self.cache.touch_host(e.name)
            self.stats["host_loads"] += 1
        elif self.peft is None:
            with quiet_peft_wrap():
                self.peft = PeftModel.from_pretrained(self.model, str(e.path), adapter_name=name,
                                                      is_trainable=False, use_safetensors=True)
            self.peft.eval()
            self.stats["disk_loads"] += 1
        else:
            self.peft.load_adapter(str(e.path), adapter_name=name, is_trainable=False, use_safetensors=True)
            self.stats["disk_loads"] += 1
        self._refresh_layers()
        self.peft.eval()
        self._on_change()
        return name

    # -- slots -----------------------------------------------------------------------------
    def _slot_for(self, e: AdapterEntry) -> Slot:
        """A free slot that fits *e*: an unused one, the least recently used fitting one, or a new one."""
        free = self.cache.free_slot_for(e)
        if free is not None:
            return free
        if len(self.resident) >= self.max_resident:
            # evict the least recently used adapter whose slot fits, else the least recent one
            slots = self.cache.slots
            victim = next((n for n, p in self.resident.items() if p in slots and slots[p].fits(e)), None)
            if victim is not None:
                p = self.resident[victim]
                self.evict(victim)
                return slots[p]
            self.evict(next(iter(self.resident)))
        return self.create_slot(e)

    def create_slot(self, e: AdapterEntry, drop_unused: bool = True) -> Slot:
        if drop_unused:
            for s in self.cache.unused_slots():
                # an unused slot of another layout: give its memory back before the new one is made
                del self.cache.slots[s.name]
                self._delete_peft_adapter(s.name)
        slot = self.new_slot("slot", e)
        self.cache.slots[slot.name] = slot
        self._on_change()  # PEFT may activate a freshly added adapter on some layers
        return slot

    def new_slot(self, prefix: str, e: AdapterEntry) -> Slot:
        """A slot shaped for *e* at the session's slot rank, as a new PEFT adapter (not yet in the cache)."""
        rank = self._slot_rank(e)
        name = self._new_name(prefix)
        self._wrap_with(name, self._peft_config(e, rank=rank), low_cpu=True)
        slot = Slot(name, rank, tuple(sorted(e.lora_modules)), e.other_keys)
        bind_slot(slot, self.peft, self.device)
        self._refresh_layers()
        return slot

    def _slot_rank(self, e: AdapterEntry) -> int:
        ranks = [a.rank for a in self.adapters.values() if a.fast and a.other_keys == e.other_keys]
        r = max([e.rank, *ranks])
        if self._slot_rank_hint:
            r = max(r, int(self._slot_rank_hint))
        return r

    # -- PEFT wrapping --------------------------------------------------------------------
    def _peft_config(self, e: AdapterEntry, rank: int | None = None) -> Any:
        from peft import PeftConfig

        try:
            cfg = PeftConfig.from_pretrained(str(e.path))
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"{e.path / 'adapter_config.json'} cannot be read by PEFT: {exc}") from None
        cfg.inference_mode = True
        if rank is not None:  # a slot: rank padded, scalings set per adapter by the session
            cfg.r, cfg.lora_alpha, cfg.rank_pattern, cfg.alpha_pattern, cfg.use_rslora = rank, rank, {}, {}, False
            cfg.init_lora_weights = False
        return cfg

    def _new_name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def _wrap_with(self, peft_name: str, config: Any, *, low_cpu: bool) -> None:
        from peft import get_peft_model

        self.family = self.family or str(getattr(config, "peft_type", "")).split(".")[-1].upper()
        if self.peft is None:
            with quiet_peft_wrap():
                self.peft = get_peft_model(self.model, config, adapter_name=peft_name, low_cpu_mem_usage=low_cpu)
            self.peft.eval()
        else:
            self.peft.add_adapter(peft_name, config, low_cpu_mem_usage=low_cpu)

    def _delete_peft_adapter(self, peft_name: str) -> None:
        assert self.peft is not None
        if len(self.peft.peft_config) <= 1:
            self.resident.clear()
            self.unwrap()
            return
        self.peft.delete_adapter(peft_name)
        self._refresh_layers()

    def unwrap(self) -> None:
        """Remove every adapter layer, restoring the base modules (base weights untouched)."""
        if self.peft is None:
            return
        for name in list(self.resident):
            self.evict(name, keep_host=True, delete=False)
        strip_adapter_layers(self.model)
        self.peft = None
        self.family = None
        self.cache.slots.clear()
        self.live = None
        self.compiled = None
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        self.tuner_layers, self.aux = adapter_layers(self.peft)

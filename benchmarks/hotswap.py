"""Hot-swap benchmark: one base, many LoRA adapters; prints JSON.

Measured in one run on one base (a random llama built from a config, ~134M parameters
by default, saved to a temp folder):

* resident switch: median and p99 of ``session.use(name)`` between adapters already on
  the device (cache of 8);
* load from disk: ``use(name)`` of an adapter in neither cache tier, against the floor
  (``safetensors.torch.load_file`` of its file plus copying every tensor to the device;
  on CPU the copy is a clone), as a ratio;
* the naive way: load the base and ``PeftModel.from_pretrained`` per switch, as a ratio;
* memory: host RSS and device memory after cycling 200 adapter names through a cache of
  8 resident (+ 8 in host memory), against after the first 8 and once the cache is full,
  then after 200 more;
* torch.compile: graphs compiled while swapping 20 times (resident and from disk) after
  the first compiled call (torch._dynamo counters), and the in-place swap time.

Targets: resident switch < 1 ms; disk load <= 1.5x floor; >= 100x faster than naive;
no memory growth once the cache is full; no recompiles.

    python benchmarks/hotswap.py [--quick] [--device cpu|cuda] [--backend eager|inductor]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def build(root: Path, quick: bool, n_files: int, rank: int) -> tuple[Path, list[Path], int]:
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    if quick:
        cfg = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
    else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=12, num_key_value_heads=12, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    base = root / "base"
    model.save_pretrained(str(base), safe_serialization=True)
    lcfg = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    pm = get_peft_model(model, lcfg)
    sd = get_peft_model_state_dict(pm)
    files = []
    for i in range(n_files):
        g = torch.Generator().manual_seed(100 + i)
        d = root / f"adapter-{i:02d}"
        pm.peft_config["default"].save_pretrained(str(d))
        save_file({k: torch.randn(v.shape, generator=g) * 0.02 for k, v in sd.items()},
                  str(d / "adapter_model.safetensors"))
        files.append(d)
    del pm, model
    gc.collect()
    return base, files, n_params


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a ~30M-parameter base and fewer repetitions")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default=None, help="torch.compile backend (default: inductor on CUDA, eager on CPU)")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from adapterstudio.ml.inference import InferenceSession, resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def dev_mem() -> int | None:
        return torch.cuda.memory_allocated() if cuda else None

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="hotswap-bench-"))
    base, files, n_params = build(tmp, args.quick, n_files=16, rank=args.rank)
    res: dict = {"device": str(device), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads(), "base_params": n_params, "adapter_rank": args.rank,
                 "adapter_targets": "q,k,v,o", "adapter_bytes": (files[0] / "adapter_model.safetensors").stat().st_size}

    s = InferenceSession(base, task="CAUSAL_LM", device=str(device), dtype="fp32", max_resident=8, max_host=8)
    n_names = 200
    names = [f"ad{i:03d}" for i in range(n_names)]  # 200 catalogue names over 16 distinct files
    for i, n in enumerate(names):
        s.add_adapter(n, files[i % len(files)])
    x = {"input_ids": torch.randint(0, 1000, (1, 16))}

    # -- memory: the first 8, then 200 names through the cache --------------------------------
    for n in names[:8]:
        s.use(n)
        s.logits(x)
    gc.collect()
    sync()
    rss_8, dev_8 = rss_mb(), dev_mem()
    info_8 = s.cache_info()
    for n in names[8:16]:  # the host tier fills too (8 more): the cache is now full
        s.use(n)
        s.logits(x)
    gc.collect()
    sync()
    rss_first, dev_first = rss_mb(), dev_mem()
    info_first = s.cache_info()
    for n in names:
        s.use(n)
        s.logits(x)
    gc.collect()
    sync()
    rss_after, dev_after = rss_mb(), dev_mem()
    info_after = s.cache_info()
    for n in names:  # 200 more: does anything keep growing?
        s.use(n)
        s.logits(x)
    gc.collect()
    sync()
    rss_400, dev_400 = rss_mb(), dev_mem()
    res["memory"] = {
        "resident_cache": 8, "host_cache": 8,
        "rss_mb_after_first_8": round(rss_8, 1), "rss_mb_when_full_16": round(rss_first, 1),
        "rss_mb_after_200": round(rss_after, 1), "rss_mb_after_400": round(rss_400, 1),
        "rss_growth_mb_after_full": round(rss_after - rss_first, 1),
        "rss_growth_mb_200_to_400": round(rss_400 - rss_after, 1), "device_bytes_after_400": dev_400,
        "device_bytes_after_first_8": dev_8, "device_bytes_when_full": dev_first, "device_bytes_after_200": dev_after,
        "cache_bytes_after_first_8": info_8["slot_bytes"] + info_8["host_bytes"],
        "cache_bytes_when_full": info_first["slot_bytes"] + info_first["host_bytes"],
        "cache_bytes_after_200": info_after["slot_bytes"] + info_after["host_bytes"],
        "cache_bytes_after_400": s.cache_info()["slot_bytes"] + s.cache_info()["host_bytes"],
        "peft_adapters_in_model": len(s.peft_model.peft_config),
    }

    # -- resident switches ---------------------------------------------------------------
    resident = list(s.cache_info()["resident"])
    reps = 500 if args.quick else 2000
    times = []
    for i in range(reps):
        n = resident[i % len(resident)]
        t0 = time.perf_counter_ns()
        s.use(n)
        sync()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    res["resident_switch_ms"] = {"median": round(statistics.median(times), 4), "p99": round(pct(times, 0.99), 4),
                                 "n": reps}
    # the switch really changes the output
    s.use(resident[0])
    a = s.logits(x)
    s.use(resident[1])
    b = s.logits(x)
    res["switch_changes_output"] = bool((a - b).abs().max() > 0)

    # -- load from disk vs the floor ------------------------------------------------------
    s.max_host = 0
    s.cache.clear_host()
    loads, floors = [], []
    reps = 8 if args.quick else 24
    order = [n for n in names if n not in s.cache_info()["resident"]]
    for i in range(reps):
        n = order[i]
        path = s.adapters[n].weights
        t0 = time.perf_counter()
        s.use(n)  # neither tier has it: read + copy into a slot (after evicting the LRU)
        sync()
        loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sd = load_file(str(path))
        moved = {k: (v.to(device, copy=True)) for k, v in sd.items()}
        sync()
        floors.append(time.perf_counter() - t0)
        del sd, moved
    load_ms, floor_ms = statistics.median(loads) * 1e3, statistics.median(floors) * 1e3
    res["disk_load_ms"] = {"median": round(load_ms, 3), "floor_median": round(floor_ms, 3),
                           "ratio_to_floor": round(load_ms / floor_ms, 3)}

    # -- the naive way ----------------------------------------------------------------------
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    naive = []
    for i in range(2 if args.quick else 3):
        t0 = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(device)
        pmodel = PeftModel.from_pretrained(m, str(files[i]))
        sync()
        naive.append(time.perf_counter() - t0)
        del m, pmodel
        gc.collect()
    naive_ms = statistics.median(naive) * 1e3
    res["naive_switch_ms"] = round(naive_ms, 1)
    res["speedup_vs_naive"] = {"resident_switch": round(naive_ms / res["resident_switch_ms"]["median"], 1),
                               "disk_load": round(naive_ms / load_ms, 1)}

    # -- torch.compile: swap in place, count graphs --------------------------------------------
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    backend = args.backend or ("inductor" if cuda else "eager")
    s.max_host = 8
    dynamo.reset()
    s.compile(resident[0], backend=backend)
    s.logits(x)  # the first compiled call
    graphs0 = counters["stats"]["unique_graphs"]
    recompiles0 = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    swap_ms = []
    seq = [resident[1], resident[2], order[-1], resident[0], order[-2], resident[3]] * (2 if args.quick else 4)
    for n in seq:
        t0 = time.perf_counter_ns()
        s.use(n)
        sync()
        swap_ms.append((time.perf_counter_ns() - t0) / 1e6)
        s.logits(x)
    res["compile"] = {
        "backend": backend, "swaps": len(seq),
        "graphs_compiled_first_call": graphs0,
        "graphs_compiled_during_swaps": counters["stats"]["unique_graphs"] - graphs0,
        "recompiles_during_swaps": (sum(counters["recompiles"].values()) if "recompiles" in counters else 0) - recompiles0,
        "swap_ms_median": round(statistics.median(swap_ms), 4),
    }
    res["targets"] = {
        "resident_switch_under_1ms": res["resident_switch_ms"]["median"] < 1.0,
        "disk_load_within_1_5x_floor": res["disk_load_ms"]["ratio_to_floor"] <= 1.5,
        "at_least_100x_vs_naive": res["speedup_vs_naive"]["resident_switch"] >= 100,
        "no_memory_growth": res["memory"]["cache_bytes_after_200"] == res["memory"]["cache_bytes_when_full"]
        and (dev_after is None or dev_after <= dev_first) and res["memory"]["rss_growth_mb_after_full"] < 16,
        "no_recompiles": res["compile"]["graphs_compiled_during_swaps"] == 0,
    }
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    s.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())

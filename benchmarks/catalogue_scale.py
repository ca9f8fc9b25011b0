"""Catalogue at scale: list and search 10,000 adapters.

Builds a library of N adapters (one real PEFT LoRA imported, the rest catalogue entries
sharing its content-addressed files, with varied names, tags, types and bases), then
times in one run:

- opening the catalogue in a fresh process and listing everything (and whether torch
  got imported),
- list / search / filter through the Python API (median of repeats),
- the same listing done the way tools without a catalogue do it: walking N adapter
  folders and parsing each adapter_config.json (the baseline).

Prints JSON. Target: list and search well under 100 ms at 10,000 adapters.

    python benchmarks/catalogue_scale.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_peft_lora(out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    base = BertForSequenceClassification(cfg)
    base.save_pretrained(out / "base")
    m = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"]))
    m.save_pretrained(out / "lora")
    return out


def timeit(fn, repeats: int = 15) -> dict:
    times = []
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2),
            "rows": len(result) if hasattr(result, "__len__") else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="as-bench-"))
    os.environ["ADAPTERSTUDIO_HOME"] = str(work / "library")
    from adapterstudio.services.library import open_library

    src = make_peft_lora(work)
    lib = open_library()
    lib.add_base(src / "base", "bert-a", compute_hash=False)
    lib.add_base(src / "base", "bert-b", compute_hash=False)
    first = lib.import_adapter(src / "lora", "adapter-00000", tags=["seed"])
    full = lib.catalogue.get_adapter(first.name)
    files = [(f.relpath, f.sha256, f.size) for f in full.files]
    peft_types = ["LORA", "IA3", "LOHA", "LOKR", "ADALORA"]
    tasks = ["SEQ_CLS", "CAUSAL_LM", "TOKEN_CLS"]
    topics = ["sentiment", "topics", "toxicity", "intent", "ner", "chat", "code", "legal", "medical", "support"]
    base_ids = {b.name: b.id for b in lib.list_bases()}
    t0 = time.perf_counter()
    for i in range(1, args.n):
        uid, _ = lib.catalogue.stage_adapter_folder([(rel, sha) for rel, sha, _ in files])
        lib.catalogue.insert_adapter(
            uid=uid, name=f"{topics[i % 10]}-{peft_types[i % 5].lower()}-{i:05d}",
            base_id=base_ids["bert-a" if i % 2 else "bert-b"], base_ref="bert", peft_type=peft_types[i % 5],
            task_type=tasks[i % 3], rank=(4, 8, 16, 32)[i % 4], target_modules=["query", "value"],
            size_bytes=full.size_bytes, compatible=True, compat_reason="", files=files, source="bench",
            tags=[topics[i % 10], f"v{i % 7}"], notes=f"run {i} on {topics[(i * 7) % 10]} data",
        )
    build_s = time.perf_counter() - t0
    lib.close()

    # A fresh process opens the library and lists everything, as the CLI and GUI do.
    probe = (
        "import sys, time, json; t = time.perf_counter();"
        "from adapterstudio.services.library import open_library; lib = open_library();"
        "rows = lib.list_adapters(); dt = (time.perf_counter() - t) * 1000;"
        "print(json.dumps({'open_and_list_ms': round(dt, 1), 'rows': len(rows),"
        " 'torch_imported': 'torch' in sys.modules, 'qt_imported': 'PySide6' in sys.modules}))"
    )
    cold = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "adapterstudio", "adapter", "list", "--json"], capture_output=True, check=True)
    cli_ms = (time.perf_counter() - t) * 1000

    lib = open_library()
    results = {
        "list_all": timeit(lambda: lib.list_adapters()),
        "list_page_200": timeit(lambda: lib.list_adapters(limit=200)),
        "search_text": timeit(lambda: lib.list_adapters(search="toxicity")),
        "search_notes": timeit(lambda: lib.list_adapters(search="legal data")),
        "filter_tag": timeit(lambda: lib.list_adapters(tag="intent")),
        "filter_base_and_type": timeit(lambda: lib.list_adapters(base="bert-a", peft_type="IA3")),
        "count": timeit(lambda: [lib.catalogue.count_adapters()]),
    }

    # Baseline: no index, walk the adapter folders and parse every config.
    def scan_folders():
        out = []
        for d in (lib.root / "adapters").iterdir():
            cfg = d / "adapter_config.json"
            if cfg.is_file():
                out.append(json.loads(cfg.read_text()))
        return out

    baseline = timeit(scan_folders, repeats=3)
    report = {
        "adapters": lib.catalogue.count_adapters(),
        "build_seconds": round(build_s, 1),
        "fresh_process": cold,
        "cli_adapter_list_json_ms": round(cli_ms, 1),
        "api": results,
        "baseline_scan_folders": baseline,
        "speedup_list_vs_folder_scan": round(baseline["median_ms"] / results["list_all"]["median_ms"], 1),
        "target_met": all(r["median_ms"] < 100 for k, r in results.items() if k != "list_all")
        and results["list_all"]["median_ms"] < 100 and not cold["torch_imported"],
        "python": sys.version.split()[0],
    }
    print(json.dumps(report, indent=2))
    import shutil

    lib.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

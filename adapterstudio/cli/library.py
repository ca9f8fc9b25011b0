"""``adapterstudio base ...``, ``adapterstudio adapter ...`` and ``adapterstudio catalogue ...``."""

from __future__ import annotations

import argparse
from typing import Any

from adapterstudio.cli._common import add_group, emit, human_size, open_lib, progress, table
from adapterstudio.core.names import printable


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    base = add_group(sub, "base", "register and list frozen base models")
    p = base.add_parser("add", parents=[common], help="register a local model folder or a Hub id (owner/name)")
    p.add_argument("source", metavar="PATH|HUB_ID")
    p.add_argument("--name", help="catalogue name (default: the folder name or Hub id)")
    p.add_argument("--hub-id", help="the Hub repository a local folder is a copy of (used as base_model when sharing)")
    p.add_argument("--no-hash", action="store_true", help="skip the content hash (faster for very large models)")
    p.set_defaults(handler=base_add)
    p = base.add_parser("list", parents=[common], help="list registered base models")
    p.set_defaults(handler=base_list)
    p = base.add_parser("show", parents=[common], help="show one base model")
    p.add_argument("name")
    p.set_defaults(handler=base_show)
    p = base.add_parser("scan-cache", parents=[common], help="register the models in the Hugging Face cache (in place)")
    p.add_argument("--cache-dir", help="cache folder (default: $HF_HUB_CACHE or $HF_HOME/hub)")
    p.set_defaults(handler=base_scan)
    p = base.add_parser("remove", parents=[common], help="forget a base model (its files are not touched)")
    p.add_argument("name")
    p.set_defaults(handler=base_remove)

    ad = add_group(sub, "adapter", "import, list, inspect and export adapters")
    p = ad.add_parser("import", parents=[common], help="import a PEFT adapter folder")
    p.add_argument("path")
    p.add_argument("--name", help="catalogue name (default: the folder name)")
    p.add_argument("--base", help="the catalogued base it belongs to (default: from its adapter_config.json)")
    p.add_argument("--tag", action="append", default=[], help="add a tag (repeatable)")
    p.add_argument("--notes", default="")
    p.add_argument("--allow-pickle", action="store_true", help="accept adapter_model.bin (pickle can run code: trusted sources only)")
    p.set_defaults(handler=adapter_import)
    p = ad.add_parser("list", parents=[common], help="list adapters, optionally filtered")
    p.add_argument("--base", help="only adapters of this base")
    p.add_argument("--search", help="text in the name, notes, tags or base")
    p.add_argument("--tag")
    p.add_argument("--task", help="task type, e.g. SEQ_CLS, CAUSAL_LM")
    p.add_argument("--peft-type", help="e.g. LORA, IA3, LOHA")
    p.add_argument("--base-missing", action="store_true", help="only adapters whose base is not catalogued")
    p.add_argument("--sort", choices=["name", "created", "size"], default="name")
    p.set_defaults(handler=adapter_list)
    p = ad.add_parser("show", parents=[common], help="show an adapter with its files and lineage")
    p.add_argument("name")
    p.set_defaults(handler=adapter_show)
    p = ad.add_parser("check", parents=[common], help="check that an adapter fits its base (or --base)")
    p.add_argument("name")
    p.add_argument("--base")
    p.set_defaults(handler=adapter_check)
    p = ad.add_parser("remove", parents=[common], help="remove an adapter (files shared with others are kept)")
    p.add_argument("name")
    p.set_defaults(handler=adapter_remove)
    p = ad.add_parser("export", parents=[common], help="copy an adapter's folder out, byte-identical")
    p.add_argument("name")
    p.add_argument("dir")
    p.set_defaults(handler=adapter_export)
    p = ad.add_parser("rename", parents=[common], help="rename an adapter")
    p.add_argument("name")
    p.add_argument("new_name")
    p.set_defaults(handler=adapter_rename)
    p = ad.add_parser("tag", parents=[common], help="add or remove tags")
    p.add_argument("name")
    p.add_argument("tags", nargs="+")
    p.add_argument("--remove", action="store_true", help="remove these tags instead")
    p.set_defaults(handler=adapter_tag)
    p = ad.add_parser("note", parents=[common], help="set an adapter's notes")
    p.add_argument("name")
    p.add_argument("text")
    p.set_defaults(handler=adapter_note)

    cat = add_group(sub, "catalogue", "library maintenance")
    p = cat.add_parser("check", parents=[common], help="integrity check; --fix removes files a crash left behind")
    p.add_argument("--fix", action="store_true")
    p.set_defaults(handler=catalogue_check)
    p = cat.add_parser("path", parents=[common], help="print where the library lives")
    p.set_defaults(handler=catalogue_path)


# -- bases ---------------------------------------------------------------------
def _base_lines(b) -> str:
    return "\n".join([
        f"name:          {b.name}",
        f"source:        {b.source}" + ("" if b.available else " (not available locally)"),
        f"path:          {b.path or '-'}",
        f"hub id:        {b.hub_id or '-'}",
        f"revision:      {b.revision or '-'}",
        f"content hash:  {b.content_hash or '-'}",
        f"architecture:  {b.architecture or '-'} ({b.model_type or '-'})",
        f"parameters:    {b.num_parameters:,}" if b.num_parameters else "parameters:    -",
        f"dtype:         {b.dtype or '-'}",
        f"size:          {human_size(b.size_bytes)}",
        f"targets:       {', '.join(b.target_modules) or '-'}",
    ])


def base_add(args: argparse.Namespace) -> int:
    lib = open_lib(args)
    with progress("hashing", args) as ctx:
        b = lib.add_base(args.source, args.name, compute_hash=not args.no_hash, hub_id=args.hub_id, ctx=ctx)
    emit(args, b.to_json(), lambda: f"Registered base model {b.name!r}.\n" + _base_lines(b))
    return 0


def base_list(args: argparse.Namespace) -> int:
    bases = open_lib(args).list_bases()
    emit(args, [b.to_json() for b in bases], lambda: table(
        [[b.name, b.architecture, f"{b.num_parameters / 1e6:.1f}M" if b.num_parameters else None, b.dtype,
          human_size(b.size_bytes), b.source + ("" if b.available else " (missing)")] for b in bases],
        ["NAME", "ARCHITECTURE", "PARAMS", "DTYPE", "SIZE", "SOURCE"]) if bases else "No base models yet: try 'adapterstudio base add PATH' or 'adapterstudio base scan-cache'.")
    return 0


def base_show(args: argparse.Namespace) -> int:
    b = open_lib(args).catalogue.get_base(args.name)
    emit(args, b.to_json(), lambda: _base_lines(b))
    return 0


def base_scan(args: argparse.Namespace) -> int:
    lib = open_lib(args)
    with progress("scanning", args) as ctx:
        res = lib.scan_hf_cache(args.cache_dir, ctx=ctx)
    data = {"added": [b.to_json() for b in res["added"]], "skipped": res["skipped"]}
    emit(args, data, lambda: "\n".join(
        [f"added    {b.name}" for b in res["added"]] + [f"skipped  {s['name']}: {s['reason']}" for s in res["skipped"]]
    ) or "No models found in the Hugging Face cache.")
    return 0


def base_remove(args: argparse.Namespace) -> int:
    b = open_lib(args).remove_base(args.name)
    emit(args, b.to_json(), f"Removed base model {b.name!r} from the catalogue (its files were not touched).")
    return 0


# -- adapters ------------------------------------------------------------------
def _compat_text(a) -> str:
    if a.compatible is None:
        return "base missing" if a.base is None else "unknown"
    return "yes" if a.compatible else f"no: {a.compat_reason}"


def _adapter_lines(a) -> str:
    lines = [
        f"name:        {printable(a.name)}",
        f"base:        {a.base or f'missing (it names {a.base_ref!r})'}",
        f"type:        {a.peft_type}" + (f", rank {a.rank}" if a.rank else ""),
        f"task:        {a.task_type or '-'}",
        f"targets:     {', '.join(a.target_modules) or '-'}",
        f"compatible:  {_compat_text(a)}",
        f"size:        {human_size(a.size_bytes)}",
        f"tags:        {', '.join(map(printable, a.tags)) or '-'}",
        f"source:      {a.source}" + (f" ({a.source_ref})" if a.source_ref else ""),
        f"path:        {a.path}",
    ]
    if a.parent:
        lines.append(f"parent:      {a.parent}")
    if a.run_id:
        lines.append(f"run:         {a.run_id}")
    if a.notes:
        lines.append(f"notes:       {a.notes}")
    if a.files:
        lines.append("files:")
        lines += [f"  {f.relpath}  {human_size(f.size)}  sha256:{f.sha256[:12]}" for f in a.files]
    return "\n".join(lines)


def adapter_import(args: argparse.Namespace) -> int:
    lib = open_lib(args)
    with progress("importing", args) as ctx:
        a = lib.import_adapter(args.path, args.name, base=args.base, allow_pickle=args.allow_pickle or None,
                               tags=args.tag, notes=args.notes, ctx=ctx)
    emit(args, a.to_json(), lambda: f"Imported adapter {a.name!r}.\n" + _adapter_lines(a))
    return 0


def adapter_list(args: argparse.Namespace) -> int:
    items = open_lib(args).list_adapters(base=args.base, search=args.search, tag=args.tag, task_type=args.task,
                                         peft_type=args.peft_type, base_missing=True if args.base_missing else None,
                                         order=args.sort)
    emit(args, [a.to_json(full=False) for a in items], lambda: table(
        [[printable(a.name), a.base or "(missing)", a.peft_type, a.rank, a.task_type, human_size(a.size_bytes),
          {True: "yes", False: "no", None: "?"}[a.compatible], ",".join(map(printable, a.tags))] for a in items],
        ["NAME", "BASE", "TYPE", "RANK", "TASK", "SIZE", "FITS", "TAGS"]) if items else "No adapters match.")
    return 0


def adapter_show(args: argparse.Namespace) -> int:
    a = open_lib(args).catalogue.get_adapter(args.name)
    emit(args, a.to_json(), lambda: _adapter_lines(a))
    return 0


def adapter_check(args: argparse.Namespace) -> int:
    lib = open_lib(args)
    a = lib.catalogue.get_adapter(args.name, full=False)
    report = lib.check_adapter(args.name, args.base)
    target = args.base or a.base
    if args.base is None or args.base == a.base:
        lib.catalogue.update_adapter(a.name, compatible=report.compatible, compat_reason=report.reason)
    data = {"name": a.name, "base": target, "compatible": report.compatible, "problems": report.problems,
            "modules_checked": report.modules_checked}
    emit(args, data, lambda: f"{a.name} fits {target} ({report.modules_checked} modules checked)." if report.compatible
         else f"{a.name} does not fit {target}:\n" + "\n".join(f"  - {p}" for p in report.problems))
    return 0 if report.compatible else 1


def adapter_remove(args: argparse.Namespace) -> int:
    a = open_lib(args).remove_adapter(args.name)
    emit(args, a.to_json(full=False), f"Removed adapter {a.name!r}.")
    return 0


def adapter_export(args: argparse.Namespace) -> int:
    out = open_lib(args).export_adapter(args.name, args.dir)
    emit(args, {"name": args.name, "path": str(out)}, f"Exported {args.name!r} to {out}.")
    return 0


def adapter_rename(args: argparse.Namespace) -> int:
    a = open_lib(args).rename_adapter(args.name, args.new_name)
    emit(args, a.to_json(full=False), f"Renamed {args.name!r} to {a.name!r}.")
    return 0


def adapter_tag(args: argparse.Namespace) -> int:
    lib = open_lib(args)
    a = lib.tag_adapter(args.name, remove=args.tags) if args.remove else lib.tag_adapter(args.name, add=args.tags)
    emit(args, a.to_json(full=False), f"{printable(a.name)}: tags {', '.join(map(printable, a.tags)) or '(none)'}.")
    return 0


def adapter_note(args: argparse.Namespace) -> int:
    a = open_lib(args).set_notes(args.name, args.text)
    emit(args, a.to_json(full=False), f"Notes of {a.name!r} updated.")
    return 0


def catalogue_check(args: argparse.Namespace) -> int:
    res = open_lib(args).catalogue.check(fix=args.fix)
    emit(args, res, lambda: "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0 if res["ok"] else 1


def catalogue_path(args: argparse.Namespace) -> int:
    lib = open_lib(args)
    emit(args, {"library": str(lib.root)}, str(lib.root))
    return 0

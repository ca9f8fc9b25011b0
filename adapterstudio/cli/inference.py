"""``adapterstudio infer``, ``adapterstudio serve`` and ``adapterstudio export``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from adapterstudio.cli._common import cli_context, emit, open_lib, progress, want_json
from adapterstudio.core.errors import InvalidInput
from adapterstudio.core.settings import PRECISIONS

API_KEY_ENV = "ADAPTERSTUDIO_API_KEY"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--base", required=True, help="the catalogued base model to load")
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: settings)")
    run.add_argument("--precision", choices=PRECISIONS, help="default: settings")

    p = sub.add_parser("infer", parents=[common, run], help="run a base with adapters (generate or classify)",
                       description="Run the base alone, with one adapter, or with a weighted blend "
                                   "(--adapter A:0.7 --adapter B:0.3). Classifiers print labels and probabilities.")
    p.add_argument("prompt", nargs="?", help="the input text (or use --input FILE)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="adapter to use (repeat for a blend; WEIGHT defaults to 1)")
    p.add_argument("--input", metavar="FILE", help="one input per line (.txt), or JSON lines with 'text'/'prompt'/'messages'")
    p.add_argument("--chat", action="store_true", help="wrap each text as a user message in the adapter's chat template")
    _gen_args(p)
    p.set_defaults(handler=cmd_infer)

    p = sub.add_parser("serve", parents=[common, run], help="an OpenAI-compatible local HTTP endpoint",
                       description="Serve GET /v1/models, POST /v1/chat/completions and /v1/completions; the "
                                   "request's model is BASE or BASE:ADAPTER (adapters hot-swapped per request); "
                                   "generations run one at a time.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every request (default: ${API_KEY_ENV}); "
                        "required when --host is not a loopback address")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="cancel a request after this long, waiting in the queue included (default 600)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("export", parents=[common], help="export an adapter merged into a full model, or as GGUF LoRA",
                       description="--merged DIR: merge into the base and save a full model (safetensors); several "
                                   "NAME:WEIGHT merge a weighted blend. --gguf DIR: a GGUF LoRA and an Ollama "
                                   "Modelfile, without merging.")
    p.add_argument("names", nargs="+", metavar="NAME[:WEIGHT]")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--merged", metavar="DIR")
    g.add_argument("--gguf", metavar="DIR")
    p.add_argument("--precision", choices=PRECISIONS, help="merged weights' dtype (default: fp32 on CPU)")
    p.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="GGUF tensor type (default f32)")
    p.set_defaults(handler=cmd_export)


def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int)


def _open(args: argparse.Namespace):
    from adapterstudio.services.inference import open_inference

    lib = open_lib(args)
    ctx, bar = cli_context("loading", args)
    inf = open_inference(lib, args.base, device=args.device, precision=args.precision, ctx=ctx)
    return lib, inf, bar


def _read_inputs(args: argparse.Namespace) -> list[Any]:
    if args.input and args.prompt:
        raise InvalidInput("Give either a PROMPT or --input FILE, not both.")
    if not args.input:
        if args.prompt is None:
            raise InvalidInput("Give a PROMPT or --input FILE.")
        return [args.prompt]
    path = Path(args.input).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{path} cannot be read: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text.") from None
    items: list[Any] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                obj = json.loads(line)
            except ValueError:
                raise InvalidInput(f"{path}:{i} is not a JSON object.") from None
            if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                items.append(obj["messages"])
            elif isinstance(obj, dict) and isinstance(obj.get("text", obj.get("prompt")), str):
                items.append(obj.get("text", obj.get("prompt")))
            else:
                raise InvalidInput(f"{path}:{i} needs a 'text', 'prompt' or 'messages' field.")
        else:
            items.append(line)
    if not items:
        raise InvalidInput(f"{path} holds no inputs.")
    return items


def cmd_infer(args: argparse.Namespace) -> int:
    from adapterstudio.services.inference import parse_adapter_arg

    inputs = _read_inputs(args)
    specs = [parse_adapter_arg(a) for a in args.adapter]
    lib, inf, bar = _open(args)
    try:
        inf.use_spec(specs)
        bar.close()
        sess = inf.active
        out: dict[str, Any] = {"base": args.base, "adapters": {n: w for n, w in specs}, "task": sess.task}
        if sess.task in ("SEQ_CLS", "TOKEN_CLS"):
            texts = [x if isinstance(x, str) else json.dumps(x) for x in inputs]
            res = inf.classify(texts)
            out["results"] = res
            emit(args, out, lambda: "\n".join(_fmt_cls(r) for r in res))
            return 0
        params = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      stop=args.stop, seed=args.seed)
        prompts = [[{"role": "user", "content": x}] if args.chat and isinstance(x, str) else x for x in inputs]
        if not want_json(args) and len(prompts) == 1:
            for piece in inf.generate(prompts[0], stream=True, **params):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        results = []
        for x, pr in zip(inputs, prompts, strict=True):
            results.append({"input": x, "output": inf.generate(pr, **params)})
        out["results"] = results
        emit(args, out, lambda: "\n---\n".join(r["output"] for r in results))
        return 0
    finally:
        inf.close()
        lib.close()


def _fmt_cls(r: dict[str, Any]) -> str:
    if "value" in r:
        return f"{r['value']:.4f}\t{r['input']}"
    if "tokens" in r:
        return " ".join(f"{t['token']}/{t['label']}" for t in r["tokens"])
    return f"{r['label']}\t{r['probabilities'][r['label']]:.3f}\t{r['input']}"


def cmd_export(args: argparse.Namespace) -> int:
    from adapterstudio.services.inference import export_gguf, export_merged, parse_adapter_arg

    lib = open_lib(args)
    try:
        specs = [parse_adapter_arg(n) for n in args.names]
        with progress("exporting", args) as ctx:
            if args.merged:
                out = export_merged(lib, dict(specs), args.merged, precision=args.precision or "fp32", ctx=ctx)
                data: dict[str, Any] = {"merged": str(out), "adapters": dict(specs)}
                text = f"Merged model written to {out}"
            else:
                if len(specs) != 1 or specs[0][1] != 1.0:
                    raise InvalidInput("GGUF export takes one adapter (no weights); merge blends with --merged.")
                data = export_gguf(lib, specs[0][0], args.gguf, outtype=args.outtype, ctx=ctx)
                text = (f"GGUF LoRA written to {data['gguf']}\nModelfile written to {data['modelfile']} "
                        "(edit its FROM line to your base GGUF, then: ollama create NAME -f Modelfile)")
        emit(args, data, text)
        return 0
    finally:
        lib.close()


# -- serve ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """Load the base, bind the port, print the address, then serve (adapterstudio.server) until stopped."""
    from adapterstudio.server.app import check_bind, create_app, listen, uvicorn_server

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(args.host, api_key)
    if not args.timeout > 0:
        raise InvalidInput("--timeout must be a positive number of seconds.")
    lib, inf, bar = _open(args)
    try:
        bar.close()
        inf.session()  # load the base before announcing the address
        sock = listen(args.host, args.port)
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
        if want_json(args):
            print(json.dumps({"url": url, "base": args.base}), flush=True)
        else:
            print(f"Serving {args.base} at {url} (model: {args.base} or {args.base}:ADAPTER); Ctrl+C stops.",
                  flush=True)
        try:
            uvicorn_server(create_app(inf, api_key=api_key, request_timeout=args.timeout)).run(sockets=[sock])
        except KeyboardInterrupt:
            pass
    finally:
        inf.close()
        lib.close()
    return 0

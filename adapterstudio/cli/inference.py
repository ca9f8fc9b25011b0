"""``adapterstudio infer``, ``adapterstudio serve`` and ``adapterstudio export``."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from adapterstudio.cli._common import cli_context, emit, open_lib, progress, want_json
from adapterstudio.core.errors import InvalidInput, UserError
from adapterstudio.core.settings import PRECISIONS


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
                                   "request's model is BASE or BASE:ADAPTER (adapters hot-swapped per request).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
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
    from http.server import ThreadingHTTPServer

    lib, inf, bar = _open(args)
    bar.close()
    inf.session()  # load the base before announcing the address
    handler = _make_handler(lib, inf, args.base)
    try:
        server = ThreadingHTTPServer((args.host, args.port), handler)
    except OSError as exc:
        inf.close()
        lib.close()
        raise InvalidInput(f"Cannot listen on {args.host}:{args.port}: {exc.strerror or exc}.") from None
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host  # typeshed allows bytes (AF_UNIX); AF_INET gives str
    url = f"http://{host}:{port}/v1"
    if want_json(args):
        print(json.dumps({"url": url, "base": args.base}), flush=True)
    else:
        print(f"Serving {args.base} at {url} (model: {args.base} or {args.base}:ADAPTER); Ctrl+C stops.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        inf.close()
        lib.close()
    return 0


def _make_handler(lib: Any, inf: Any, base: str):
    from http.server import BaseHTTPRequestHandler

    worker = threading.Lock()  # generation is serialized on one worker

    class Handler(BaseHTTPRequestHandler):
        server_version = "AdapterStudio"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: Any) -> None:  # quiet by default
            pass

        def _json(self, code: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str, kind: str = "invalid_request_error") -> None:
            self._json(code, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                now = int(time.time())
                data = [{"id": base, "object": "model", "created": now, "owned_by": "adapterstudio"}]
                with worker:
                    adapters = lib.list_adapters(base=base)
                for a in adapters:
                    if a.compatible is not False:
                        data.append({"id": f"{base}:{a.name}", "object": "model", "created": int(a.created_at),
                                     "owned_by": "adapterstudio"})
                self._json(200, {"object": "list", "data": data})
            else:
                self._error(404, f"No route {self.path}.")

        def do_POST(self) -> None:
            route = self.path.rstrip("/")
            if route not in ("/v1/chat/completions", "/v1/completions"):
                return self._error(404, f"No route {self.path}.")
            try:
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(req, dict):
                    raise ValueError
            except ValueError:
                return self._error(400, "The request body is not a JSON object.")
            chat = route.endswith("chat/completions")
            try:
                self._complete(req, chat)
            except UserError as exc:
                self._error(400, str(exc))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _complete(self, req: dict[str, Any], chat: bool) -> None:
            model = str(req.get("model") or base)
            name, sep, adapter = model.partition(":")
            if name != base:
                raise InvalidInput(f"This server runs base {base!r}; model must be {base!r} or {base!r}:ADAPTER.")
            if chat:
                messages = req.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise InvalidInput("messages must be a non-empty list.")
                prompt: Any = [{"role": str(m.get("role", "user")), "content": _content(m.get("content"))}
                               for m in messages if isinstance(m, dict)]
            else:
                prompt = req.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1:
                    prompt = prompt[0]
                if not isinstance(prompt, str):
                    raise InvalidInput("prompt must be a string.")
            stop = req.get("stop") or []
            stop = [stop] if isinstance(stop, str) else [str(s) for s in stop]
            max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or 128
            params = dict(max_new_tokens=int(max_tokens), temperature=float(req.get("temperature", 0.7)),
                          top_p=float(req.get("top_p", 1.0)), stop=stop, seed=req.get("seed"))
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            created = int(time.time())
            with worker:
                inf.use(adapter or None) if sep else inf.use(None)
                if inf.active.task != "CAUSAL_LM":
                    raise InvalidInput(f"{model} is not a text-generation model ({inf.active.task}).")
                if req.get("stream"):
                    self._stream(prompt, params, chat, rid, created, model)
                    return
                text = inf.generate(prompt, **params)
                last = dict(inf.active.last_generation)
            n_prompt, n_out = int(last.get("prompt_tokens", 0)), int(last.get("completion_tokens", 0))
            finish = last.get("finish_reason", "stop")
            usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                self._json(200, {"id": rid, "object": "chat.completion", "created": created, "model": model,
                                 "choices": [choice], "usage": usage})
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                self._json(200, {"id": rid, "object": "text_completion", "created": created, "model": model,
                                 "choices": [choice], "usage": usage})

        def _stream(self, prompt: Any, params: dict[str, Any], chat: bool, rid: str, created: int, model: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            obj = "chat.completion.chunk" if chat else "text_completion"

            def send(choice: dict[str, Any]) -> None:
                chunk = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

            if chat:
                send({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None})
            stream = inf.generate(prompt, stream=True, **params)
            try:
                for piece in stream:
                    send({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat else
                         {"index": 0, "text": piece, "finish_reason": None, "logprobs": None})
            except (BrokenPipeError, ConnectionResetError):
                inf.stop()
                stream.close()
                return
            finish = inf.active.last_generation.get("finish_reason", "stop")
            send({"index": 0, "delta": {}, "finish_reason": finish} if chat else
                 {"index": 0, "text": "", "finish_reason": finish, "logprobs": None})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def _content(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "" if c is None else str(c)


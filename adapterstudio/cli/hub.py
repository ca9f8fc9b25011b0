"""``adapterstudio hub ...``: share adapters through hub providers; and ``adapterstudio base fetch``."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from adapterstudio.cli._common import add_group, emit, human_size, open_lib, progress, table
from adapterstudio.core.errors import InvalidInput, UserError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    hub = add_group(sub, "hub", "share adapters: Hugging Face Hub, a shared folder, or any provider plugin")

    def prov(p: argparse.ArgumentParser) -> None:
        p.add_argument("--provider", metavar="P", help="hub provider (default: the default_hub_provider setting, 'huggingface')")

    p = hub.add_parser("providers", parents=[common], help="list installed hub providers (broken ones with their error)")
    p.set_defaults(handler=hub_providers)
    p = hub.add_parser("login", parents=[common], help="store an access token (with the provider's own mechanism)")
    p.add_argument("--token-stdin", action="store_true", help="read the token from standard input instead of a prompt")
    prov(p)
    p.set_defaults(handler=hub_login)
    p = hub.add_parser("logout", parents=[common], help="forget the stored token")
    prov(p)
    p.set_defaults(handler=hub_logout)
    p = hub.add_parser("whoami", parents=[common], help="show who you are logged in as")
    prov(p)
    p.set_defaults(handler=hub_whoami)
    p = hub.add_parser("search", parents=[common], help="search shared adapters (--base: the adapters of one base model)")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("--base", metavar="NAME", help="a catalogued base model (or a Hub id): list its adapters")
    p.add_argument("--author", help="only this owner's adapters")
    p.add_argument("--limit", type=int, default=50)
    prov(p)
    p.set_defaults(handler=hub_search)
    p = hub.add_parser("show", parents=[common], help="show a shared adapter's card and files")
    p.add_argument("id", metavar="ID", help="owner/name")
    p.add_argument("--revision")
    prov(p)
    p.set_defaults(handler=hub_show)
    p = hub.add_parser("push", parents=[common], help="publish a catalogued adapter (new repository or new revision)")
    p.add_argument("name", help="the adapter's catalogue name")
    p.add_argument("--repo", required=True, metavar="ID", help="owner/name to publish as")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", "-m", help="commit message")
    p.add_argument("--base-model", metavar="ID", help="the base's Hub id for the card, when the catalogue has none")
    prov(p)
    p.set_defaults(handler=hub_push)
    p = hub.add_parser("pull", parents=[common], help="download a shared adapter and import it (safetensors only)")
    p.add_argument("id", metavar="ID", help="owner/name")
    p.add_argument("--revision", help="a commit/revision id (default: the latest)")
    p.add_argument("--name", help="catalogue name (default: the repository name)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle weights (can run code: trusted sources only)")
    prov(p)
    p.set_defaults(handler=hub_pull)
    p = hub.add_parser("delete", parents=[common], help="delete a shared adapter repository (cannot be undone)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--yes", action="store_true", help="confirm")
    prov(p)
    p.set_defaults(handler=hub_delete)

    base_parser = sub.choices.get("base")
    if base_parser is not None:
        actions = [a for a in base_parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if actions:
            p = actions[0].add_parser("fetch", parents=[common],
                                      help="download a base registered by Hub id (safetensors, config, tokenizer)")
            p.add_argument("name")
            p.add_argument("--revision")
            p.set_defaults(handler=base_fetch)


def hub_providers(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    lib = open_lib(args)
    entries = hub.list_providers(lib)
    default = lib.settings.default_hub_provider
    data = [{**e.to_json(), "default": e.name == default} for e in entries]
    emit(args, data, lambda: table(
        [[e.name + (" *" if e.name == default else ""), e.distribution, e.version,
          "ok" if e.ok else ("disabled" if e.disabled else f"broken: {e.error}")] for e in entries],
        ["provider", "distribution", "version", "status"]) if entries else
        "No hub providers installed: pip install ./plugins/adapterstudio-hf ./plugins/adapterstudio-folder")
    return 0


def _read_token(args: argparse.Namespace) -> str:
    if args.token_stdin:
        token = sys.stdin.readline().strip()
    elif sys.stdin.isatty():
        token = getpass.getpass("Access token (input hidden): ").strip()
    else:
        raise InvalidInput("No terminal to prompt for the token; pipe it in with --token-stdin.")
    if not token:
        raise InvalidInput("The token is empty.")
    return token


def hub_login(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    lib = open_lib(args)
    status = hub.login(lib, _read_token(args), provider=args.provider)
    emit(args, status.to_json(), status.detail)
    return 0


def hub_logout(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    hub.logout(open_lib(args), provider=args.provider)
    emit(args, {"logged_out": True}, "Logged out.")
    return 0


def hub_whoami(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    status = hub.whoami(open_lib(args), provider=args.provider)
    if not status.logged_in:
        raise UserError(status.detail)
    emit(args, status.to_json(), status.detail)
    return 0


def hub_search(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    hits = hub.search(open_lib(args), args.query, base=args.base, provider=args.provider, author=args.author,
                      limit=args.limit)
    emit(args, [h.to_json() for h in hits], lambda: table(
        [[h.id, h.base_model, h.pipeline_tag, "private" if h.private else "public", (h.last_modified or "")[:10]] for h in hits],
        ["id", "base model", "task", "visibility", "updated"]) if hits else "No adapters found.")
    return 0


def hub_show(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    d = hub.show(open_lib(args), args.id, revision=args.revision, provider=args.provider)

    def text() -> str:
        a = d.adapter
        head = [f"{a.id}  ({a.provider}, revision {a.revision})", f"base model: {a.base_model or '-'}",
                f"tags: {', '.join(a.tags) or '-'}", "",
                table([[f.path, human_size(f.size), "lfs" if f.lfs else ""] for f in d.files], ["file", "size", ""])]
        if d.card:
            head += ["", d.card.strip()]
        return "\n".join(head)

    emit(args, d.to_json(), text)
    return 0


def hub_push(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    lib = open_lib(args)
    with progress(f"push {args.name}", args) as ctx:
        res = hub.push_adapter(lib, args.name, args.repo, provider=args.provider, private=args.private,
                               message=args.message, base_model=args.base_model, ctx=ctx)
    emit(args, res, f"Published {res['adapter']} as {res['id']} (revision {res['revision'][:12]}, base {res['base_model']})"
         + (f": {res['url']}" if res.get("url") else "."))
    return 0


def hub_pull(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    lib = open_lib(args)
    with progress(f"pull {args.id}", args) as ctx:
        res = hub.pull_adapter(lib, args.id, revision=args.revision, name=args.name, provider=args.provider,
                               allow_pickle=True if args.allow_pickle else None, ctx=ctx)
    text = f"Imported {res['id']}@{res['revision'][:12]} as {res['adapter']}" + (
        f" (base {res['base']})." if res["base"] else ".")
    if res.get("hint"):
        text += "\n" + res["hint"]
    emit(args, res, text)
    return 0


def hub_delete(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    if not args.yes:
        raise InvalidInput(f"Deleting {args.id} cannot be undone; add --yes to confirm.")
    hub.get_provider(open_lib(args), args.provider).delete(args.id)
    emit(args, {"deleted": args.id}, f"Deleted {args.id}.")
    return 0


def base_fetch(args: argparse.Namespace) -> int:
    from adapterstudio.services import hub

    lib = open_lib(args)
    with progress(f"fetch {args.name}", args) as ctx:
        rec = hub.fetch_base(lib, args.name, revision=args.revision, ctx=ctx)
    emit(args, rec.to_json(), f"Downloaded {rec.hub_id} to {rec.path} ({rec.architecture}, {human_size(rec.size_bytes)}).")
    return 0

"""Entry script of the frozen application: the same CLI, GUI when run without a command.

A frozen app has no separate Python interpreter, yet training runs in a child process
started as ``sys.executable -m accelerate.commands.launch ...`` which in turn starts
``sys.executable <script.py> ...`` or ``sys.executable -m <module> ...`` (and, for several
processes, torchrun's ``sys.executable -u -m <module> ...``). Since ``sys.executable`` is
this program when frozen, it behaves like ``python`` for those forms (``-m module``,
``script.py``, ``-c code``, after any of the interpreter flags listed below) and like
``adapterstudio`` otherwise.
"""

import multiprocessing
import os
import runpy
import sys

# python's own flags that a launcher may put before -m/-c/script (they are accepted and,
# except -u, have no effect here: the frozen interpreter's settings are fixed at build time)
_FLAGS = {"-u", "-B", "-E", "-s", "-S", "-I", "-O", "-OO", "-b", "-bb", "-q", "-P", "-d", "-v"}
_FLAGS_WITH_VALUE = {"-X", "-W"}


def _python_args(args: list[str]) -> list[str] | None:
    """The arguments after python's own flags, if *args* look like a python command line."""
    i = 0
    unbuffered = False
    while i < len(args):
        if args[i] in _FLAGS:
            unbuffered |= args[i] == "-u"
            i += 1
        elif args[i] in _FLAGS_WITH_VALUE and i + 1 < len(args):
            i += 2
        else:
            break
    rest = args[i:]
    if (len(rest) >= 2 and rest[0] in ("-m", "-c")) or (rest and rest[0].endswith(".py")):
        if unbuffered:
            os.environ["PYTHONUNBUFFERED"] = "1"
            for stream in (sys.stdout, sys.stderr):
                if stream is not None and hasattr(stream, "reconfigure"):
                    stream.reconfigure(line_buffering=True, write_through=True)
        return rest
    return None


def _run() -> int:
    args = sys.argv[1:]
    rest = _python_args(args)
    if rest is None:
        from adapterstudio.cli import main

        return main(args)
    if rest[0] == "-m":  # like python: the current folder first on sys.path
        sys.path.insert(0, os.getcwd())
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    elif rest[0] == "-c":
        sys.path.insert(0, "")
        sys.argv = ["-c", *rest[2:]]
        exec(compile(rest[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - python -c
    else:  # script.py: its folder first on sys.path
        sys.path.insert(0, os.path.dirname(os.path.abspath(rest[0])))
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(_run())

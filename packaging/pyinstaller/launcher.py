"""Entry script of the frozen application: the same CLI, GUI when run without a command.

A frozen app has no separate Python interpreter, yet training runs in a child process
started as ``sys.executable -m accelerate.commands.launch ...`` which in turn starts
``sys.executable <script.py> ...`` or ``sys.executable -m <module> ...``. Since
``sys.executable`` is this program when frozen, it behaves like ``python`` for those two
forms and like ``adapterstudio`` otherwise.
"""

import multiprocessing
import runpy
import sys


def _run() -> int:
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    if args and args[0].endswith(".py"):
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
        return 0
    from adapterstudio.cli import main

    return main()


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(_run())

"""Tiny models with a real (character-level) tokenizer, for training-mechanics tests; and the
training child run in the test process (:func:`child_in_process_unless_slow`).

The models are random and tiny (seconds to train); the data they see in these tests is
small synthetic text where a test is about mechanics, never called real data.
"""

from __future__ import annotations

import contextlib
import os
import string
import subprocess
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapterstudio.core.runs import STOP_FILE, WORKER_LOG

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def char_tokenizer(out: Path, kind: str, chat_template: bool = False) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"] if kind == "llama" else ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    chars = sorted(set(string.printable) - set(string.whitespace)) + ["\u2581"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[1]))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    if kind == "llama":
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                       eos_token="</s>")
    else:
        tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                          special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def tiny_with_tokenizer(kind: str, out: Path, chat_template: bool = False) -> Path:
    from tests.helpers import tiny_model

    tiny_model(kind, out)
    char_tokenizer(out, kind, chat_template)
    return out


def sentiment_rows(n: int = 120) -> list[dict]:
    """Synthetic two-class text (mechanics only): label is which word family appears."""
    import random

    rng = random.Random(0)
    pos = ["good", "great", "nice", "fine", "happy"]
    neg = ["bad", "awful", "poor", "sad", "ugly"]
    rows = []
    for i in range(n):
        lab = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(pos if lab == "pos" else neg, 2) + ["x" * rng.randint(1, 30)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": lab})
    return rows


# -- the training child in this process ---------------------------------------------------------------
NO_PID = 2**22 + 12345  # above any pid_max: the supervisor's os.killpg on it fails, and it falls back to kill()
WAIT_LIMIT_S = 120.0  # the longest an in-process worker is waited for once asked to stop


class InProcessWorker:
    """The training child, ``worker.main([RUN_DIR])``, on a thread of this process, behind the part of
    ``subprocess.Popen`` the supervisor uses (``pid``, ``returncode``, ``poll``, ``wait``, ``kill``).

    What the process boundary does for the real child is done here by hand: a fresh Accelerate state
    (as in a new process), the ``ADAPTERSTUDIO_*`` variables the supervisor passes in its environment,
    the worker lock released when the worker ends (a process exit closes it), and its event lines in
    ``worker.log`` (not the test's stdout, where a ``--json`` command prints). A thread cannot be
    killed: ``kill`` asks the worker to stop at its next step (the stop file) and waits. Tests of real
    kills, of several processes and of the launcher keep the real child (they are marked ``slow``)."""

    pid = NO_PID

    def __init__(self, run_dir: Path, held: dict[int, list[int]]) -> None:
        self.run_dir = run_dir
        self.returncode: int | None = None
        self._held = held
        self._thread = threading.Thread(target=self._main, name=f"worker {run_dir.name}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        from adapterstudio.ml.training import worker

        rc = 1
        try:
            rc = worker.main([str(self.run_dir)])
        except BaseException:  # noqa: BLE001  (what ends a real child's process: exit 1, the traceback in its log)
            with (self.run_dir / WORKER_LOG).open("a", encoding="utf-8") as log:
                traceback.print_exc(file=log)
        finally:
            for fd in self._held.pop(threading.get_ident(), []):
                os.close(fd)
            self.returncode = rc

    def poll(self) -> int | None:
        return self.returncode if not self._thread.is_alive() else None

    def wait(self, timeout: float | None = None) -> int:
        # never unbounded: after a test's timeout the supervisor's kill() waits here, and a stuck worker
        # must then fail the test, not hang it
        timeout = WAIT_LIMIT_S if timeout is None else timeout
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("worker.main", timeout)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        (self.run_dir / STOP_FILE).touch()

    terminate = kill


@contextlib.contextmanager
def workers_in_process(monkeypatch: Any) -> Iterator[list[InProcessWorker]]:
    """The training service runs its child in this process (:class:`InProcessWorker`): it replaces
    :func:`adapterstudio.services.launch.start_worker`. Yields the workers started, in order; any still
    running at the end is asked to stop and waited for."""
    from adapterstudio.core import events as run_events
    from adapterstudio.core import runs
    from adapterstudio.services import launch

    started: list[InProcessWorker] = []
    held: dict[int, list[int]] = {}  # worker locks by the thread that holds them
    real_hold = runs.hold_worker_lock

    def hold_worker_lock(run_dir: Path) -> Any:
        fd = real_hold(run_dir)
        if fd is not None:
            held.setdefault(threading.get_ident(), []).append(fd)
        return fd

    def start_worker(spec: Any, run_dir: Path, env: dict[str, str], log: Any, lock: Any) -> InProcessWorker:
        assert spec.num_processes == 1 and not spec.accelerate_config, \
            "several processes or an accelerate config need the real launcher: mark the test slow"
        from accelerate.state import AcceleratorState, GradientState

        from adapterstudio.ml.training import worker

        class EventsToLog(worker.Events):
            """The worker's event sink with its echo in ``worker.log``, where the real child's stdout goes."""

            def __call__(self, event: str, /, **data: Any) -> None:
                if self.enabled:
                    line = run_events.append(self.run_dir, event, **data)
                    with (self.run_dir / WORKER_LOG).open("a", encoding="utf-8") as f:
                        f.write(line + "\n")

        monkeypatch.setattr(worker, "Events", EventsToLog)
        for key, value in env.items():
            if key.startswith("ADAPTERSTUDIO_") and os.environ.get(key) != value:
                monkeypatch.setenv(key, value)  # the launch, the supervisor's pid (what the worker reads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        started.append(InProcessWorker(Path(run_dir), held))
        return started[-1]

    monkeypatch.setattr(runs, "hold_worker_lock", hold_worker_lock)
    monkeypatch.setattr(launch, "start_worker", start_worker)
    try:
        yield started
    finally:
        for w in started:
            if w.poll() is None:
                w.kill()
                w.wait()


@pytest.fixture(autouse=True)
def child_in_process_unless_slow(request: Any, monkeypatch: Any) -> Iterator[list[InProcessWorker] | None]:
    """Autouse where imported: a test runs the training child in this process (:func:`workers_in_process`)
    unless it is marked ``slow``; a slow test launches the real one (``accelerate launch``, processes of its own)."""
    if request.node.get_closest_marker("slow") is not None:
        yield None
        return
    with workers_in_process(monkeypatch) as started:
        yield started

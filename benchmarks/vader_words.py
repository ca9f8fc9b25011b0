"""Write the walkthrough's real labelled data: VADER lexicon words (MIT licence, shipped by
the vaderSentiment package) with their human-rated mean sentiment; >= 1.0 is 'positive',
<= -1.0 'negative'; N balanced rows. The same rule as tests/test_training_cli.py.

    python benchmarks/vader_words.py vader.csv [N]
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path


def vader_words(out: Path, n: int = 600, seed: int = 0) -> Path:
    import vaderSentiment

    lex = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    pos, neg = [], []
    for line in lex.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].isalpha():
            continue
        mean = float(parts[1])
        if mean >= 1.0:
            pos.append(parts[0])
        elif mean <= -1.0:
            neg.append(parts[0])
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    rows = [(w, "positive") for w in pos[: n // 2]] + [(w, "negative") for w in neg[: n // 2]]
    rng.shuffle(rows)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return out


if __name__ == "__main__":
    print(vader_words(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 600))

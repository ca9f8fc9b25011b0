"""Tiny models with a real (character-level) tokenizer, for training-mechanics tests.

The models are random and tiny (seconds to train); the data they see in these tests is
small synthetic text where a test is about mechanics, never called real data.
"""

from __future__ import annotations

import string
from pathlib import Path

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

"""Assets for the frozen application's smoke check, written BY the frozen application.

    dist/AdapterStudio/AdapterStudio packaging/smoke_assets.py OUT_DIR

Running a script proves the executable acts as ``python script.py`` (training's child
processes rely on it). Writes OUT_DIR/tiny-bert (a tiny random BERT classifier with a
character-level tokenizer) and OUT_DIR/data.csv: small SYNTHETIC two-class text, made up
for a mechanics check (does training run end to end), not real data.
"""

import csv
import random
import string
import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoModelForSequenceClassification, BertConfig, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model_dir = out / "tiny-bert"
    cfg = BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(model_dir), safe_serialization=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    chars = sorted(set(string.printable) - set(string.whitespace)) + ["\u2581"]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[], unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(str(model_dir))
    rng = random.Random(0)
    pos, neg = ["good", "great", "nice"], ["bad", "awful", "poor"]
    with (out / "data.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(60):
            lab = "pos" if i % 2 == 0 else "neg"
            w.writerow([" ".join(rng.sample(pos if lab == "pos" else neg, 2)), lab])
    print(f"wrote {model_dir} and {out / 'data.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Byte-level BPE training for the Multi30k tokenizer (multi30k.py), importable without torch: run as a
script it reads JSON {texts, vocab_size, min_frequency} on stdin and writes the tokenizer's JSON on stdout,
so that a run's preparation can train it in a child process a stop signal kills at once."""
from __future__ import annotations

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def bpe(texts: list[str], vocab_size: int, min_frequency: int):
    """The byte-level BPE tokenizer trained on texts (a tokenizers.Tokenizer; specials <pad>, <bos>, <eos> first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD, BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


if __name__ == "__main__":
    import json
    import sys

    a = json.load(sys.stdin)
    sys.stdout.write(bpe(a["texts"], a["vocab_size"], a["min_frequency"]).to_str())

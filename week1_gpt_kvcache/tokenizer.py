"""Two tokenizers: characters (the lesson: one id per character) and byte-level BPE.

BPE starts from the 256 byte values and repeatedly merges the most frequent adjacent pair into
a new token until the vocabulary has `vocab_size` entries. Byte-level means any text encodes
(no unknown characters) and decode(encode(text)) == text exactly.

Both save to one JSON file; `load_tokenizer(path)` reads either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"
# A plain-text chat format, so that chat APIs (vLLM's /v1/chat/completions, week 3's
# conversational data) work with a model that was never trained on a special chat markup.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class CharTokenizer:
    kind = "char"
    eos_id = None

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("a character tokenizer needs at least one character")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise ValueError(
                f"characters {unknown!r} are not in this character tokenizer's vocabulary of "
                f"{self.vocab_size}; use characters from the training corpus or the BPE tokenizer"
            ) from e

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps({"kind": "char", "chars": self.chars}, ensure_ascii=False))


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tokenizer):  # a tokenizers.Tokenizer
        self.tk = tokenizer
        self.eos_id = tokenizer.token_to_id(EOS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257 + 1:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte-level BPE needs > 257 (256 bytes + EOS)"
            )
        if vocab_size > 65535:
            raise ValueError(
                f"vocab_size={vocab_size} does not fit the uint16 token files (max 65535)"
            )
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tk.train_from_iterator(texts, trainer=trainer)
        return cls(tk)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    def save(self, path: Path | str) -> None:
        self.tk.save(str(path))

    def to_hf(self, model_max_length: int):
        """A transformers PreTrainedTokenizerFast around the same tokenizer (for export)."""
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(
            tokenizer_object=self.tk,
            eos_token=EOS,
            bos_token=EOS,
            unk_token=EOS,
            model_max_length=model_max_length,
        )
        hf.chat_template = CHAT_TEMPLATE  # saved as chat_template.jinja
        return hf


def load_tokenizer(path: Path | str) -> CharTokenizer | BPETokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer file {path} does not exist; run python -m week1_gpt_kvcache.prepare"
        )
    data = json.loads(path.read_text())
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_file(str(path)))

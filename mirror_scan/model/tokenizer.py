"""CLIP's byte-pair-encoding tokenizer without torch, so concept prompts can be re-embedded with the
exported text encoder alone. Same algorithm and vocabulary file as open_clip's SimpleTokenizer
(lower-case cleaning); tests compare the token ids with open_clip's on every shipped prompt."""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex

SOT, EOT = "<start_of_text>", "<end_of_text>"


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars], strict=True))


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    def __init__(self, bpe_path: Path, context_length: int = 77) -> None:
        merges_text = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in merges_text[1 : 49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.context_length = context_length
        self.pattern = regex.compile(
            rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )
        self._cache: dict[str, str] = {SOT: SOT, EOT: EOT}

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = (*tuple(token[:-1]), token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in regex.findall(self.pattern, _clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(mapped).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        """int64 [N, context_length]: SOT, tokens (truncated), EOT, zero padding — as open_clip."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        sot, eot = self.encoder[SOT], self.encoder[EOT]
        for row, text in enumerate(texts):
            tokens = [sot, *self.encode(text), eot]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = eot
            out[row, : len(tokens)] = tokens
        return out

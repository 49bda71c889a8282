"""Word-level tokenizer over the world's vocabulary, shipped as `tokenizer.json` in every bundle.

Torch-free: the runtime tokenizes prompts with it. Unknown words are an error that names the word
(never a silent `<unk>`), because a word the model never saw cannot steer it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edgegen.errors import PromptError

PAD = "<pad>"
_WORD = re.compile(r"[a-z]+")
MAX_PROMPT_CHARS = 300


def words_of(prompt: str) -> list[str]:
    """Lower-case words of a prompt; punctuation (commas, full stops, hyphens) separates words."""
    return _WORD.findall(prompt.lower())


@dataclass(frozen=True)
class Tokenizer:
    words: tuple[str, ...]  # index 0 is PAD
    max_len: int

    @classmethod
    def from_vocabulary(cls, vocabulary: Sequence[str], max_len: int) -> Tokenizer:
        return cls(words=(PAD, *sorted(set(vocabulary))), max_len=max_len)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a saved tokenizer; ValueError saying what is wrong when the file is not one."""
        data = json.loads(Path(path).read_text())  # not JSON / not UTF-8 → ValueError
        words, max_len = (data.get("words"), data.get("max_len")) if isinstance(data, dict) else (None, None)
        if not (isinstance(words, list) and words[:1] == [PAD] and all(isinstance(w, str) for w in words)):
            raise ValueError(f'"words" must be a list of strings starting with {PAD!r}')
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f'"max_len" must be a whole number > 0, not {max_len!r}')
        return cls(words=tuple(words), max_len=max_len)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": list(self.words), "max_len": self.max_len}, indent=1))

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, prompt: str) -> np.ndarray:
        """Token ids, PAD-filled to `max_len`: int64 [max_len]."""
        index = self._index
        words = words_of(prompt)
        if not words:
            raise PromptError("the prompt has no words; describe a scene, e.g. 'a red circle moving right'")
        unknown = [w for w in words if w not in index]
        if unknown:
            known = ", ".join(self.words[1:])
            raise PromptError(f"unknown word {unknown[0]!r} in the prompt; known words: {known}")
        if len(words) > self.max_len:
            raise PromptError(f"the prompt has {len(words)} words, at most {self.max_len} are supported; shorten it")
        ids = np.zeros(self.max_len, dtype=np.int64)
        ids[: len(words)] = [index[w] for w in words]
        return ids

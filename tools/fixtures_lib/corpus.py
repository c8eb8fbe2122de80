"""Seeded training corpus for the tokenizers: synthetic sentences + stdlib source lines."""

from __future__ import annotations

import random

from reference.corpus import stdlib_lines

_WORD_TEXT = (
    "the a an of to in on for with from by about into over after before under between "
    "model token text data file image cache layer batch vector query document answer question "
    "server client request response thread process memory engine plugin provider runtime "
    "python rust java code function class method value string number list dict tuple error "
    "quick brown fox jumps lazy dog river mountain city country weather summer winter "
    "morning evening night day week year time people world music book story friend family "
    "run read write open close build test check load save send call return start stop "
    "is are was were be has have had do does did can will would should could may might "
    "good new old big small long short high low fast slow first last next other same "
    "red green blue black white warm cold happy bright dark simple clear strong light "
    "paris london berlin tokyo rome madrid vienna prague oslo lisbon "
    "and or but not if then else when while because so than also only very just"
)
WORDS = tuple(_WORD_TEXT.split())

# Non-ASCII lines so that multi-byte sequences get a few merges too.
EXTRA_LINES = (
    "Café, naïve, façade, jalapeño, Straße, Ærøskøbing.",
    "こんにちは世界。今日はいい天気ですね。",
    "你好，世界！我们今天去公园散步。",
    "Привет, мир! Как дела?",
    "안녕하세요 세계",
    "Emoji: 😀 👋 🌍 🚀 ✨ 🎉 ❤️ 👍🏽",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
)

PUNCTUATION = (".", ".", ".", "!", "?", ",", ";", ":")


def synthetic_sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        lines.append(" ".join(words) + rng.choice(PUNCTUATION))
    return lines


def training_corpus(sentences: int, stdlib_files: int) -> list[str]:
    return synthetic_sentences(sentences) + stdlib_lines(stdlib_files) + list(EXTRA_LINES) * 20

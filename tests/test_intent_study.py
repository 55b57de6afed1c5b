"""The corpora of the Bi-LSTM study and a smoke run of `tfmetric.intent_study.run`."""

import difflib
import doctest
import importlib.util
import os
import sys

import numpy as np
import pytest

from tfmetric.datasets import text

from conftest import only_tensorflow


def test_assistant_intents_are_deterministic_distinct_and_cover_every_intent():
    texts, labels, names = text.assistant_intents(seed=3)
    assert labels.dtype == np.int64 and len(names) == 8
    assert len(texts) == len(set(texts)) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels, minlength=len(names)), np.full(len(names), len(texts) // 8))
    again = text.assistant_intents(seed=3)
    assert again[0] == texts and np.array_equal(again[1], labels)
    assert text.assistant_intents(seed=4)[0] != texts


def test_assistant_intents_share_places_and_words_across_intents():
    texts, labels, names = text.assistant_intents(typo_rate=0.0)
    for place in text._PLACES:
        intents = {label for line, label in zip(texts, labels) if place in line}
        assert len(intents) >= 5, place
    for word in ("去", "到", "明天", "附近"):
        assert len({label for line, label in zip(texts, labels) if word in line}) >= 4, word
    weather = names.index("weather")
    assert any(label == weather and "的路上天气怎么样" in line for line, label in zip(texts, labels))


@pytest.mark.parametrize("rate", [0.03, 0.15])
def test_assistant_intents_typos_hit_characters_at_the_stated_rate(rate):
    clean, clean_labels, _ = text.assistant_intents(typo_rate=0.0)
    noisy, labels, _ = text.assistant_intents(typo_rate=rate)
    np.testing.assert_array_equal(labels, clean_labels)
    edited = sum(
        len(a) - sum(block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
        for a, b in zip(clean, noisy)
    )
    # A typo that would duplicate another text is not made: slightly under the rate.
    assert rate * 0.85 < edited / sum(map(len, clean)) <= rate * 1.05
    assert all(len(b) <= len(a) for a, b in zip(clean, noisy))


def test_assistant_intents_rejects_a_rate_out_of_range():
    with pytest.raises(ValueError, match="typo_rate"):
        text.assistant_intents(typo_rate=1.0)


def write_corpus(directory, files):
    directory.mkdir()
    for name, (category, first_lines) in files.items():
        conversations = "".join(f"- - {line}\n  - 回答\n" for line in first_lines)
        (directory / f"{name}.yml").write_text(
            f"categories:\n- {category}\nconversations:\n{conversations}", encoding="utf-8"
        )
    return directory


def test_chatterbot_chinese_drops_repeats_ambiguous_lines_and_tiny_categories(tmp_path):
    pytest.importorskip("yaml")
    directory = write_corpus(
        tmp_path / "chinese",
        {
            "b_food": ("food", ["你吃饭了吗", "你喜欢吃什么", "你吃饭了吗", "你疯了"]),
            "a_ai": ("AI", ["什么是ai", "你是机器人吗", "你疯了"]),
            "c_gossip": ("gossip", ["婆娘", "婆娘"]),
        },
    )
    texts, labels, names = text.chatterbot_chinese(directory)
    assert names == ("AI", "food")
    assert texts == ["什么是ai", "你是机器人吗", "你吃饭了吗", "你喜欢吃什么"]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1]


def test_chatterbot_chinese_says_what_is_missing(tmp_path, monkeypatch):
    pytest.importorskip("yaml")
    with pytest.raises(FileNotFoundError, match="No .yml files"):
        text.chatterbot_chinese(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps chatterbot-corpus"):
        text.chatterbot_chinese()


def test_chatterbot_chinese_needs_pyyaml(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ImportError, match="pip install pyyaml"):
        text.chatterbot_chinese(tmp_path)


def test_the_installed_chatterbot_corpus():
    pytest.importorskip("yaml")
    pytest.importorskip("chatterbot_corpus")
    texts, labels, names = text.chatterbot_chinese()
    assert len(names) == 17 and len(texts) == len(set(texts)) == len(labels) == 365
    assert np.bincount(labels).min() >= 2


@only_tensorflow
@pytest.mark.slow
def test_a_short_study_prints_and_returns_one_row_per_loss(tmp_path, capsys):
    from tfmetric import intent_study

    corpus = text.assistant_intents(examples_per_intent=12)
    rows = intent_study.run(corpus, seeds=1, epochs=1, log_dir=tmp_path, queries=["导航到高铁东站"])
    assert [row["loss"] for row in rows] == list(intent_study.LOSSES)
    for row in rows:
        assert len(row["precision@1"]) == 1 and 0.0 <= row["mean"] <= 1.0 and row["std"] == 0.0
        assert row["gates"] == [str(tmp_path / row["loss"] / "gates" / "epoch-0001" / "sample-000.png")]
        assert (tmp_path / row["loss"] / "embeddings.gif").exists() and row["film"].endswith("embeddings.gif")
        assert all(os.path.exists(path) for path in row["gates"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("loss") and "mean ± std over 1 seeds" in printed[1]
    assert [line.split("|")[0].strip() for line in printed[2:]] == list(intent_study.LOSSES)


def test_the_study_rejects_unknown_names():
    pytest.importorskip("tensorflow")
    from tfmetric import intent_study

    with pytest.raises(ValueError, match="Unknown losses"):
        intent_study.run(losses=("softmax",))
    with pytest.raises(ValueError, match="Unknown corpus"):
        intent_study.run("weibo")


def test_the_text_examples_run():
    assert doctest.testmod(text, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0

"""Data side: every source, dedup + split, the reference language's exact entropy, bad-input messages."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub

import numpy as np
import pytest

from pipeline.data.reference import ReferenceLanguage, geometric_entropy, make_lexicon
from pipeline.data.sources import load_documents
from pipeline.data.splits import deduplicate, split_documents
from pipeline.data.wikipedia import clean_wikitext, group_paragraphs
from pipeline.errors import UserError

TEXTS = ["The first document.", "A second one, with ünïcödé.", "Third: 日本語 text.", "Fourth document here.",
         "Fifth and last."]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """load_dataset caches what it builds; keep that inside the test's tmp dir."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


# ---------------------------------------------------------------- hf: (local folders)


def test_hf_source_reads_a_save_to_disk_dataset(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": TEXTS, "id": list(range(5))}).save_to_disk(str(tmp_path / "saved"))
    assert load_documents(f"hf:{tmp_path / 'saved'}") == TEXTS
    assert load_documents(f"hf:{tmp_path / 'saved'}", max_documents=2) == TEXTS[:2]
    assert load_documents(f"hf:{tmp_path / 'saved'}", streaming=True, max_documents=3) == TEXTS[:3]


def test_hf_source_picks_the_split_of_a_saved_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"body": TEXTS[:3]}),
                 "test": Dataset.from_dict({"body": TEXTS[3:]})}).save_to_disk(str(tmp_path / "dd"))
    assert load_documents(f"hf:{tmp_path / 'dd'}", text_field="body", split="test") == TEXTS[3:]
    with pytest.raises(UserError, match=r"corpus.split: 'dev' is not a split of .*; splits: train, test"):
        load_documents(f"hf:{tmp_path / 'dd'}", text_field="body", split="dev")


def test_hf_source_reads_a_folder_of_parquet_and_json_files(tmp_path, hf_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "pq" / "train.parquet")
    assert load_documents(f"hf:{tmp_path / 'pq'}") == TEXTS
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    assert load_documents(f"hf:{tmp_path / 'js'}", streaming=True) == TEXTS
    assert load_documents(f"hf:{tmp_path / 'js'}", max_documents=4) == TEXTS[:4]


def test_hf_source_names_the_missing_column(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"content": TEXTS, "id": list(range(5))}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(UserError) as info:
        load_documents(f"hf:{tmp_path / 'saved'}")
    assert str(info.value) == f"corpus.text_field: 'text' is not a column of hf:{tmp_path / 'saved'}; columns: content, id"


def test_hf_source_unavailable_offline_says_what_would_work(hf_cache):
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was not set before huggingface_hub was imported; this test must not go online")
    with pytest.raises(UserError) as info:
        load_documents("hf:nobody/no-such-dataset:some-config")
    message = str(info.value)
    assert message.startswith("corpus.source: hf:nobody/no-such-dataset:some-config could not be loaded (")
    assert message.endswith("); give a local dataset folder or a hub dataset available offline in the HF cache")
    assert "\n" not in message


# ---------------------------------------------------------------- files:


def test_txt_files_split_on_blank_lines_or_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nstill one\n\n\npara two\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("only para\r\n", encoding="utf-8")
    pattern = f"files:{tmp_path}/*.txt"
    assert load_documents(pattern) == ["para one\nstill one", "para two", "only para"]
    assert load_documents(pattern, txt_mode="file") == ["para one\nstill one\n\n\npara two", "only para"]


def test_jsonl_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in TEXTS[:2]) + "\n",
                                      encoding="utf-8")
    pq.write_table(pa.table({"body": TEXTS[2:], "n": [1, 2, 3]}), tmp_path / "e.parquet")
    docs = load_documents(f"files:{tmp_path}/*", text_field="body")
    assert docs == TEXTS  # sorted by path: d.jsonl, then e.parquet


def test_files_bad_inputs_have_one_line_messages(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok text " + b"\xff\xfe more")
    with pytest.raises(UserError) as info:
        load_documents(f"files:{tmp_path}/bad.txt")
    assert str(info.value) == (f"corpus.source: {tmp_path}/bad.txt is not UTF-8 text (invalid byte 0xff at byte offset 8); "
                               "convert it to UTF-8")

    (tmp_path / "rows.jsonl").write_text('{"body": "x", "title": "y"}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_documents(f"files:{tmp_path}/rows.jsonl")
    assert str(info.value) == f"corpus.text_field: 'text' is not a field of {tmp_path}/rows.jsonl:1; fields: body, title"

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(UserError, match=r"^corpus.text_field: 'text' is not a column of .*t.parquet; columns: body$"):
        load_documents(f"files:{tmp_path}/t.parquet")

    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_documents(f"files:{tmp_path}/empty.txt")
    assert str(info.value) == f"corpus.source: files:{tmp_path}/empty.txt yielded no documents; point it at non-empty text"

    with pytest.raises(UserError, match=r"^corpus.source: files:.*/none-\*.txt matches no files; give a glob of"):
        load_documents(f"files:{tmp_path}/none-*.txt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"x.csv has extension '.csv'; valid: .txt, .jsonl, .parquet$"):
        load_documents(f"files:{tmp_path}/x.csv")


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(UserError) as info:
        load_documents("s3://bucket/corpus")
    assert str(info.value) == ("corpus.source: unknown source 's3://bucket/corpus'; valid: hf:NAME[:CONFIG], files:GLOB, "
                               "builtin:wikipedia, builtin:reference-language")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- builtin:wikipedia


def test_wikipedia_cleaner_keeps_prose_and_drops_markup():
    wikitext = """{{Infobox thing|name=X}}
'''Anarchism''' is a [[political philosophy]] that advocates [[self-governance|self-governed]] societies.<ref>Cited, 2005. p. 14</ref> It has a long history of &amp; debate.
[[File:Flag.svg|thumb|220px|A caption that is not prose at all]]

{| class="wikitable"
|-
| a table cell with enough characters to look like prose || another
|}

== History ==
The earliest anarchist themes can be found in the 6th century BC among the works of Taoist philosopher Laozi.<!-- hidden -->

== References ==
The references section is long enough to pass the length filter, but it is not prose.

[[Category:Political philosophy]]
[[de:Anarchismus]]"""
    assert clean_wikitext(wikitext) == [
        "Anarchism is a political philosophy that advocates self-governed societies. It has a long history of & debate.",
        "The earliest anarchist themes can be found in the 6th century BC among the works of Taoist philosopher Laozi.",
    ]


def test_paragraph_groups_reach_min_chars_and_keep_every_paragraph():
    a, b, c, d = "a" * 300, "b" * 200, "c" * 450, "d" * 100
    # a+b reach 400 together; c alone does; the short tail d joins the last group instead of standing alone.
    assert group_paragraphs([a, b, c, d], 400) == [f"{a}\n\n{b}", f"{c}\n\n{d}"]
    assert group_paragraphs([a, b, c, d], 2000) == []  # the whole article is shorter than one group
    assert group_paragraphs([a, b], 0) == [f"{a}\n\n{b}"]  # 0: one document per article


def test_wikipedia_builtin_is_real_clean_text():
    docs = load_documents("builtin:wikipedia", min_chars=600)
    articles = load_documents("builtin:wikipedia", min_chars=0)
    assert 90 <= len(articles) <= 106 and 2000 <= len(docs) <= 4000
    assert all(len(d) >= 600 for d in docs)
    total_bytes = sum(len(d.encode()) for d in docs)
    assert 2_000_000 <= total_bytes <= 4_000_000
    text = "\n".join(docs)
    for residue in ("{{", "}}", "[[", "]]", "|", "<ref", "thumb", "&amp;", "Category:"):
        assert residue not in text, residue
    assert any(d.startswith("Anarchism is a political philosophy") for d in articles)


# ---------------------------------------------------------------- dedup and split


def test_dedup_and_split_are_deterministic_disjoint_and_complete():
    docs = [f"document {i}" for i in range(200)] + ["document 3", "document 7"]
    unique, removed = deduplicate(docs)
    assert removed == 2 and unique == docs[:200]
    first = split_documents(docs, 0.1, 0.05, seed=3)
    assert first == split_documents(list(docs), 0.1, 0.05, seed=3)
    assert {k: len(v) for k, v in first.items()} == {"train": 170, "validation": 20, "test": 10}
    assert sorted(first["train"] + first["validation"] + first["test"]) == sorted(unique)
    other = split_documents(docs, 0.1, 0.05, seed=4)
    assert other["test"] != first["test"]


def test_split_rejects_too_few_documents_and_bad_fractions():
    with pytest.raises(UserError) as info:
        split_documents(["a", "b", "a"], 0.1, 0.1, seed=0)
    assert str(info.value) == ("corpus.source: 2 distinct documents cannot fill train, validation and test splits; "
                               "valid: at least 3 distinct documents (more for these fractions)")
    with pytest.raises(UserError, match=r"^corpus.validation_fraction \+ corpus.test_fraction = 1; valid: below 1"):
        split_documents([str(i) for i in range(10)], 0.5, 0.5, seed=0)
    with pytest.raises(UserError, match=r"^corpus.test_fraction: 0 is not valid; valid: 0 < fraction < 1$"):
        split_documents([str(i) for i in range(10)], 0.1, 0, seed=0)


# ---------------------------------------------------------------- builtin:reference-language


def test_reference_text_parses_back_to_its_generative_path():
    language = ReferenceLanguage(beta=1.2, lexicon_size=50, mean_sentence_words=3, mean_document_sentences=2, seed=1)
    assert len(set(language.words)) == 50 and all(w.isascii() and w.isalpha() and w.islower() for w in language.words)
    assert language.words == make_lexicon(50, 1) and language.words != make_lexicon(50, 2)
    w = language.words
    doc = f"{w[0].capitalize()} {w[3]}. {w[2].capitalize()}."
    lp = language.log_prob(doc)
    q_w, q_s = 1 / 3, 1 / 2
    expected = (math.log(q_s) + math.log(1 - q_s)                       # two sentences
                + math.log(q_w) + math.log(1 - q_w) + math.log(q_w)     # lengths 2 and 1
                + sum(float(language.word_log_probs[r]) for r in (0, 3, 2)))
    assert lp == pytest.approx(expected, rel=1e-12)
    for outside in (doc[:-1], doc.lower(), doc.replace(". ", ".  "), doc + " ", "Zzzz.", ""):
        assert language.log_prob(outside) == -math.inf
    docs = language.sample_documents(50, seed=5)
    assert docs == language.sample_documents(50, seed=5) and docs != language.sample_documents(50, seed=6)
    assert all(math.isfinite(language.log_prob(d)) for d in docs)


def test_reference_empirical_entropy_matches_the_analytic_value():
    language = ReferenceLanguage(beta=1.3, lexicon_size=3000, mean_sentence_words=10, mean_document_sentences=6, seed=0)
    h_w = -sum(p * math.log(p) for p in language.word_probs)
    assert language.word_entropy() == pytest.approx(h_w, rel=1e-12)
    assert geometric_entropy(0.5) == pytest.approx(2 * math.log(2), rel=1e-12)
    docs = language.sample_documents(20_000, seed=11)
    bits = np.array([-language.log_prob(d) / math.log(2) for d in docs])
    n_bytes = np.array([len(d.encode()) for d in docs])
    empirical = language.entropy_bits_per_byte(docs)
    assert empirical == pytest.approx(bits.sum() / n_bytes.sum(), rel=1e-12)
    # Standard error of a ratio estimator (delta method): the analytic value must sit within 4 of them,
    # and the tolerance itself is tight (a few tenths of a percent).
    stderr = np.sqrt(np.var(bits - empirical * n_bytes) / len(docs)) / n_bytes.mean()
    assert stderr < 0.002 * empirical
    assert abs(empirical - language.expected_bits_per_byte()) < 4 * stderr
    assert n_bytes.mean() == pytest.approx(language.expected_document_bytes(), rel=0.01)


def test_reference_builtin_source_uses_config_parameters():
    params = {"beta": 1.3, "lexicon_size": 200, "documents": 40, "mean_sentence_words": 5.0,
              "mean_document_sentences": 2.0, "seed": 7}
    docs = load_documents("builtin:reference-language", reference=params)
    assert len(docs) == 40 and docs == load_documents("builtin:reference-language", reference=params)
    with pytest.raises(UserError, match=r"^corpus.reference.lexicon_size: missing;"):
        load_documents("builtin:reference-language", reference={"beta": 1.3})

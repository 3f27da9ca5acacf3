import json

import numpy as np
import pandas as pd
import pytest

from kdmem.config import DataConfig
from kdmem.data import DataError, example_id, load_documents, pack_sequences, prepare_sequences, python_docs
from kdmem.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_bases):
    return load_tokenizer(str(tiny_bases["teacher"]))


def test_builtin_corpus_parts_are_disjoint_and_real():
    private, public = python_docs("private"), python_docs("public")
    assert len(private) > 500 and len(public) > 1000
    assert not set(private) & set(public)
    assert sum(map(len, public)) > 2 * sum(map(len, private))
    assert any("lambda" in text for text in public + private)  # the language reference is in there


def test_packing_makes_fixed_length_named_sequences(tokenizer):
    import datasets

    documents = datasets.Dataset.from_dict({"text": ["the quick brown fox " * 20, "jumps over the lazy dog " * 30]})
    frame = pack_sequences(documents, tokenizer, seq_len=16)
    assert len(frame) > 3
    assert all(len(ids) == 16 for ids in frame["input_ids"])
    assert list(frame["example_id"]) == [example_id(ids) for ids in frame["input_ids"]]
    stream = tokenizer("the quick brown fox " * 20, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert frame["input_ids"][0].tolist() == stream[:16]
    capped = pack_sequences(documents, tokenizer, seq_len=16, limit=2)
    assert len(capped) == 2


def test_dedupe_drops_exact_repeats(tokenizer):
    import datasets

    documents = datasets.Dataset.from_dict({"text": ["same text again " * 4] * 10})
    with_repeats = pack_sequences(documents, tokenizer, seq_len=8, dedupe=False)
    deduped = pack_sequences(documents, tokenizer, seq_len=8, dedupe=True)
    assert len(deduped) < len(with_repeats)
    assert deduped["example_id"].is_unique


def test_example_id_depends_on_tokens_only():
    assert example_id([1, 2, 3]) == example_id(np.array([1, 2, 3], dtype=np.int32))
    assert example_id([1, 2, 3]) != example_id([1, 2, 4])
    assert len(example_id([5])) == 16


def test_local_formats(tmp_path, tokenizer):
    texts = [f"Document number {i} talks about item {i * 7} at length. " * 5 for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    (tmp_path / "d.txt").write_text("\n\n".join(texts))
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "d.parquet")
    lengths = []
    for name, field in (("d.jsonl", "body"), ("d.txt", "text"), ("d.parquet", "text")):
        documents = load_documents(DataConfig(source=str(tmp_path / name), text_field=field))
        assert list(documents["text"]) == texts
        lengths.append(len(pack_sequences(documents, tokenizer, seq_len=16)))
    assert lengths[0] == lengths[1] == lengths[2] > 10


def test_missing_text_field_and_missing_path(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no text field 'text'; its columns are \['content'\]"):
        load_documents(DataConfig(source=str(tmp_path / "d.jsonl")))
    with pytest.raises(DataError, match="does not exist"):
        load_documents(DataConfig(source=str(tmp_path / "nope.jsonl")))


def test_a_hub_dataset_without_the_subset_or_split_says_which(monkeypatch):
    import datasets

    def refuse(name, subset, split, streaming):  # what datasets raises for a config name it does not have
        raise ValueError(f"BuilderConfig '{subset}' not found. Available: ['sample-10BT', 'default']")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(
        DataError,
        match=r"some-org/corpus with data.subset='sample-1BT' and data.split='train'.*"
        r"'sample-10BT'.* Set data.subset and data.split",
    ):
        load_documents(DataConfig(source="some-org/corpus", subset="sample-1BT"))


def test_prepare_splits_caches_and_refuses_too_little(tmp_path, tokenizer):
    cfg = DataConfig(seq_len=32, num_examples=40, validation_examples=10)
    splits = prepare_sequences(cfg, tokenizer)
    assert (len(splits.train), len(splits.validation)) == (40, 10)
    assert not set(splits.train["example_id"]) & set(splits.validation["example_id"])
    again = prepare_sequences(cfg, tokenizer)
    assert list(again.train["example_id"]) == list(splits.train["example_id"])
    with pytest.raises(DataError, match="Lower data.num_examples"):
        prepare_sequences(DataConfig(seq_len=32, num_examples=10**7), tokenizer)
    (tmp_path / "short.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(DataError, match="yields no sequence"):
        prepare_sequences(DataConfig(source=str(tmp_path / "short.jsonl"), seq_len=32), tokenizer)


def test_streaming_reads_only_what_it_needs(tmp_path, tokenizer):
    texts = [f"Streamed document {i} says something about number {i * 3}. " * 6 for i in range(200)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    streamed = load_documents(DataConfig(source=str(tmp_path / "d.jsonl"), text_field="body", streaming=True))
    assert not hasattr(streamed, "__len__")  # an IterableDataset, read lazily
    eager = load_documents(DataConfig(source=str(tmp_path / "d.jsonl"), text_field="body"))
    a = pack_sequences(streamed, tokenizer, seq_len=16, limit=25)
    b = pack_sequences(eager, tokenizer, seq_len=16, limit=25)
    assert len(a) == 25 and list(a["example_id"]) == list(b["example_id"])


def test_streamed_sequences_are_written_a_row_group_at_a_time(tiny_bases, monkeypatch):
    import pyarrow.parquet as pq

    import kdmem.data.sequences as sequences
    from kdmem.data import count_sequences, pack_sequences, read_sequence_rows, sequence_file
    from kdmem.data.sources import load_documents

    monkeypatch.setattr(sequences, "ROW_GROUP_SIZE", 16)
    tokenizer = load_tokenizer(str(tiny_bases["teacher"]))
    cfg = DataConfig(seq_len=32, num_examples=70, validation_examples=0)
    path = sequence_file(cfg, tokenizer)
    groups = [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(path).num_row_groups)]
    assert groups == [16, 16, 16, 16, 6] and count_sequences(path) == 70
    # the same sequences, in source order, as packing in memory
    expected = pack_sequences(load_documents(cfg), tokenizer, 32, limit=70)
    streamed = read_sequence_rows(path, 0, 70)
    assert streamed["example_id"].tolist() == expected["example_id"].tolist()
    assert all((a == b).all() for a, b in zip(streamed["input_ids"], expected["input_ids"], strict=True))
    assert sequence_file(cfg, tokenizer) == path  # cached: a second call reads the same file


def marked_documents(count: int, repeats: int = 30) -> list[str]:
    """Documents that each repeat one marker word: a sequence's decoded text names its documents."""
    return [" ".join([f"rec{i:04d}"] * repeats) for i in range(count)]


def markers(frame: pd.DataFrame, tokenizer) -> set[str]:
    import re

    return {marker for ids in frame["input_ids"] for marker in re.findall(r"rec\d{4}", tokenizer.decode(ids.tolist()))}


@pytest.mark.parametrize("packing", ["concatenate", "documents"])
def test_validation_is_split_by_document(tmp_path, tokenizer, packing):
    """Every document spans several 16-token sequences; none may feed both D and validation.
    Before the split by document, a random half of a document's sequences went each way."""
    source = tmp_path / "corpus.txt"
    source.write_text("\n\n".join(marked_documents(300)), encoding="utf-8")
    splits = prepare_sequences(
        DataConfig(source=str(source), seq_len=16, num_examples=200, validation_examples=40, packing=packing),
        tokenizer,
    )
    assert len(splits.train) == 200 and len(splits.validation) == 40
    train, validation = markers(splits.train, tokenizer), markers(splits.validation, tokenizer)
    assert train and validation and not train & validation


def test_one_example_per_document_names_it_by_its_text(tmp_path, tokenizer, caplog):
    """packing: documents. The same documents under two tokenizers give the same example ids;
    documents shorter than a sequence are dropped and counted."""
    import logging
    import re

    from kdmem.data import document_id
    from kdmem.models import train_tokenizer

    texts = [
        f"Document {i}: " + "all about the quick brown fox and the lazy dog. " * (1 + i % 3) for i in range(120)
    ] + [f"short {i}" for i in range(20)]
    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": t}) for t in texts), encoding="utf-8")
    other = train_tokenizer(texts * 3, 300)
    config = DataConfig(source=str(source), seq_len=12, num_examples=80, validation_examples=10, packing="documents")
    with caplog.at_level(logging.INFO):
        ours = prepare_sequences(config, tokenizer)
    theirs = prepare_sequences(config, other)
    assert re.search(r"[1-9]\d* documents were shorter than 12 tokens and were dropped", caplog.text)
    assert ours.train["example_id"].tolist() == theirs.train["example_id"].tolist()
    assert set(ours.train["example_id"]) <= {document_id(t) for t in texts}
    for name, ids in zip(ours.train["example_id"], ours.train["input_ids"], strict=True):
        text = next(t for t in texts if document_id(t) == name)
        assert ids.tolist() == tokenizer(text)["input_ids"][:12]
    assert not any(
        np.array_equal(a, b) for a, b in zip(ours.train["input_ids"], theirs.train["input_ids"], strict=True)
    )  # other tokens, same examples


def test_documents_start_as_the_tokenizer_starts_a_text(tmp_path, tokenizer):
    """A tokenizer that prepends BOS (Llama, Gemma) gives every document-aligned example a BOS;
    concatenated packing never adds one (documents are joined by end-of-text, as for Pythia)."""
    import copy

    from tokenizers.processors import TemplateProcessing

    with_bos = copy.deepcopy(tokenizer)
    bos = with_bos.convert_tokens_to_ids("<|endoftext|>")
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    source = tmp_path / "corpus.txt"
    source.write_text(
        "\n\n".join(f"Text number {i} says something about foxes and dogs." for i in range(300)), encoding="utf-8"
    )
    documents = prepare_sequences(
        DataConfig(source=str(source), seq_len=8, num_examples=30, validation_examples=5, packing="documents"),
        with_bos,
    )
    assert all(ids[0] == bos for ids in documents.train["input_ids"])
    plain = prepare_sequences(
        DataConfig(source=str(source), seq_len=8, num_examples=30, validation_examples=0), tokenizer
    )
    assert plain.train["input_ids"].iloc[0][0] != bos


def test_folders_written_by_save_to_disk(tmp_path):
    """A Dataset and a DatasetDict saved with save_to_disk, found by their metadata files and read
    with load_from_disk (before, their dataset_info.json was read as a JSON data file)."""
    import datasets

    texts = [f"Saved document {i} holds its own words, {i * 3} of them. " * 3 for i in range(12)]
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": texts}), "test": datasets.Dataset.from_dict({"text": texts[:2]})}
    ).save_to_disk(str(tmp_path / "dict"))
    assert list(load_documents(DataConfig(source=str(tmp_path / "one"), text_field="body"))["text"]) == texts
    assert list(load_documents(DataConfig(source=str(tmp_path / "dict")))["text"]) == texts
    assert list(load_documents(DataConfig(source=str(tmp_path / "dict"), split="test"))["text"]) == texts[:2]
    assert [
        row["text"]
        for row in load_documents(DataConfig(source=str(tmp_path / "one"), text_field="body", streaming=True))
    ] == texts
    with pytest.raises(DataError, match=r"is a DatasetDict with splits train, test, not 'validation'. Set data.split"):
        load_documents(DataConfig(source=str(tmp_path / "dict"), split="validation"))


def test_a_folder_of_neither_kind_says_what_it_holds(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.bin").write_bytes(b"\0" * 8)
    (tmp_path / "odd" / "notes").mkdir()
    with pytest.raises(
        DataError,
        match=r"is neither a dataset saved with save_to_disk .* nor a folder of .txt, .jsonl or .parquet files; "
        r"it holds notes/, weights.bin\.",
    ):
        load_documents(DataConfig(source=str(tmp_path / "odd")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="it holds nothing"):
        load_documents(DataConfig(source=str(tmp_path / "empty")))


def test_documents_in_memory_become_a_file_named_by_their_content(tmp_path):
    import datasets

    from kdmem.data import write_documents

    texts = ["first document", "second document"]
    paths = {
        write_documents(texts, tmp_path),
        write_documents(pd.DataFrame({"text": texts, "other": [1, 2]}), tmp_path),
        write_documents(datasets.Dataset.from_dict({"text": texts}), tmp_path),
    }
    assert len(paths) == 1 and list(pd.read_parquet(paths.pop())["text"]) == texts
    assert write_documents(texts[:1], tmp_path) != write_documents(texts, tmp_path)
    with pytest.raises(DataError, match=r"no text field 'text'; their columns are \['body'\]"):
        write_documents(pd.DataFrame({"body": texts}), tmp_path)
    with pytest.raises(DataError, match="Document 1 is a int, not a string"):
        write_documents(["a", 3], tmp_path)
    with pytest.raises(DataError, match="Documents of type dict cannot be read"):
        write_documents({"text": texts}, tmp_path)

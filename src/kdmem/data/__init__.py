"""Data: where text comes from and how it becomes the fixed-length training set D."""

from kdmem.data.builtin import python_docs
from kdmem.data.sequences import (
    SequenceSplits,
    as_tensor,
    as_training_dataset,
    count_sequences,
    document_id,
    example_id,
    load_sequences,
    pack_sequences,
    prepare_sequences,
    read_sequence_rows,
    read_sequences,
    sequence_file,
    write_sequences,
    zlib_entropy,
)
from kdmem.data.sources import DataError, load_documents, write_documents

__all__ = [
    "DataError",
    "SequenceSplits",
    "as_tensor",
    "as_training_dataset",
    "document_id",
    "example_id",
    "load_documents",
    "count_sequences",
    "load_sequences",
    "pack_sequences",
    "read_sequence_rows",
    "sequence_file",
    "prepare_sequences",
    "python_docs",
    "read_sequences",
    "write_documents",
    "write_sequences",
    "zlib_entropy",
]

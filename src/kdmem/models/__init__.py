"""Models: loading by name or path, and the embedded tiny family."""

from kdmem.models.loading import ModelError, check_same_vocabulary, load_model, load_tokenizer
from kdmem.models.tiny import build_model, train_tokenizer

__all__ = ["ModelError", "build_model", "check_same_vocabulary", "load_model", "load_tokenizer", "train_tokenizer"]

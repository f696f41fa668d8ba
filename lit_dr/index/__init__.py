"""Corpus embeddings on disk, FAISS indexes and search, for every process of a job (`CorpusIndex`)."""

from lit_dr.index.corpus_index import CorpusIndex, Encoding, Tower

__all__ = ["CorpusIndex", "Encoding", "Tower"]

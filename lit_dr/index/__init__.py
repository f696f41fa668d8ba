"""Corpus embeddings on disk, FAISS indexes and search, for every process of a job."""

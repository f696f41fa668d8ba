"""Negatives from rankings: pure miners, BM25 retrieval, negatives tables on disk."""

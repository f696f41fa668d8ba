"""Retrieval metrics (trec_eval conventions), TREC run files, and the arithmetic behind the notebooks."""

"""JudgmentTable: CSR judgments read exactly as the dict of dicts they replace (order, grade 0, merge, reverse)."""

from __future__ import annotations

import numpy as np
import pytest

from lit_dr.data.judgment_table import JudgmentTable, merge


def random_judgments(rng: np.random.Generator, queries: int, docs: int = 50) -> dict[int, dict[int, int]]:
    """query row -> {corpus row: grade}, rows and documents in random order, grades -1..3 (0: judged, not relevant)."""
    rows = rng.permutation(queries * 3)[:queries]
    return {int(q): {int(d): int(rng.integers(-1, 4)) for d in rng.permutation(docs)[:rng.integers(1, 8)]}
            for q in rows}


def test_reads_equal_the_dict_on_random_data():
    rng = np.random.default_rng(1)
    judged = random_judgments(rng, 300)
    table = JudgmentTable.from_dict(judged)
    assert list(table) == list(judged) and len(table) == len(judged)
    for q, rel in judged.items():
        assert list(table[q].items()) == list(rel.items())  # each query's documents in file order
        assert table.docs_of(q).tolist() == list(rel) and table.grades_of(q).tolist() == list(rel.values())
    assert table == judged
    absent = next(q for q in range(10_000) if q not in judged)
    assert absent not in table and table.get(absent) is None and table.docs_of(absent).tolist() == []
    with pytest.raises(KeyError):
        table[absent]


def test_grade_zero_stays_judged_and_not_relevant():
    table = JudgmentTable.from_dict({7: {3: 0, 1: 2, 5: -1, 4: 1}})
    assert table[7] == {3: 0, 1: 2, 5: -1, 4: 1}
    positives = table.positives()
    assert positives[7].tolist() == [1, 4]  # in file order, grade > 0 only
    assert table.queries_of_docs(positives_only=True).get(3) == set()
    assert table.queries_of_docs(positives_only=False).get(3) == {7}


def test_positives_and_queries_of_docs_equal_the_old_dict_forms():
    rng = np.random.default_rng(2)
    judged = random_judgments(rng, 400)
    table = JudgmentTable.from_dict(judged)
    positives = table.positives()
    for q, rel in judged.items():
        assert positives[q].tolist() == [d for d, g in rel.items() if g > 0]
        with pytest.raises(ValueError):
            positives[q][:1] = 0  # read-only views
    for only in (True, False):
        old: dict[int, set[int]] = {}
        for q, rel in judged.items():
            for d, g in rel.items():
                if g > 0 or not only:
                    old.setdefault(d, set()).add(q)
        index = table.queries_of_docs(only)
        for d in range(60):
            got, want = index.get(d), old.get(d, set())
            assert got == want and list(got) == list(want)  # same set, same iteration order


def test_merge_is_dict_update_in_turn_and_subset_keeps_the_order():
    rng = np.random.default_rng(3)
    parts = [random_judgments(rng, n) for n in (40, 0, 80, 60)]
    want: dict[int, dict[int, int]] = {}
    for part in parts:
        want.update(part)
    merged = merge([JudgmentTable.from_dict(p) for p in parts])
    assert list(merged) == list(want) and all(list(merged[q].items()) == list(want[q].items()) for q in want)
    assert len(merge([])) == 0
    rows = rng.permutation(list(want))[:25].tolist()
    assert list(merged.subset(rows)) == rows and merged.subset(rows) == {r: want[r] for r in rows}
    with pytest.raises(KeyError):
        merged.subset([max(want) + 1])

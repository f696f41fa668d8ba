"""The teacher scores reader (`lit_dr.data.teacher_scores`): its three layouts, errors naming file, line and field,
and unknown ids counted in one warning."""

import logging

import pytest

from lit_dr.data.formats import DataFormatError
from lit_dr.data.teacher_scores import load_teacher_scores, read_teacher_scores

EXPECTED = {"q1": {"d1": 1.5, "d2": -0.25}, "q2": {"d1": 3.0}}


@pytest.mark.parametrize("text", [
    "query-id\tcorpus-id\tscore\nq1\td1\t1.5\nq1\td2\t-0.25\n\nq2\td1\t3\n",  # BEIR-style TSV, blank line skipped
    "q1\td1\t1.5\nq1\td2\t-0.25\nq2\td1\t3\n",  # no header
    "q1 d1 1.5\nq1  d2 -0.25\nq2 d1 3e0\n",  # qid pid score, any whitespace
    "q1 Q0 d1 1 1.5 run\nq1 Q0 d2 2 -0.25 run\nq2 Q0 d1 1 3.0 run\n",  # TREC run (lit-dr search)
], ids=["beir", "no-header", "whitespace", "trec"])
def test_layouts(tmp_path, text):
    path = tmp_path / "t.tsv"
    path.write_text(text)
    assert read_teacher_scores(path) == EXPECTED


@pytest.mark.parametrize("text, line, field, problem", [
    ("q1\td1\t1\nq1\td1\t2\n", 2, "corpus-id", "already scored on line 1"),
    ("q1 Q0 d1 1 1 r\nq1 Q0 d1 2 1 r\n", 2, "docid", "already scored on line 1"),
    ("q1\td1\tx\n", 1, "score", "expected a number, got 'x'"),
    ("q1\td1\tnan\n", 1, "score", "expected a finite number"),
    ("q1 Q0 d1 1 inf r\n", 1, "score", "expected a finite number"),
    ("q1\td1\n", 1, "columns", "got 2 columns"),
    ("q1\td1\t1\nq1 Q0 d2 1 1 r\n", 2, "columns", "expected 3 columns like the first line, got 6"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nquery-id\tcorpus-id\tscore\n", 3, "score", "expected a number"),
])
def test_errors_name_file_line_and_field(tmp_path, text, line, field, problem):
    path = tmp_path / "t.tsv"
    path.write_text(text)
    with pytest.raises(DataFormatError) as e:
        read_teacher_scores(path)
    assert (e.value.path, e.value.line, e.value.field) == (path, line, field)
    assert problem in e.value.problem and str(path) in str(e.value)


class Store:
    def __init__(self, *ids):
        self.row_of = {i: r for r, i in enumerate(ids)}


def test_rows_and_unknown_ids_counted_in_one_warning(tmp_path, caplog):
    path = tmp_path / "t.tsv"
    path.write_text("q1\td1\t1\nq1\tdX\t2\nqX\td1\t3\nqX\td2\t4\nq2\td2\t5\n")
    with caplog.at_level(logging.WARNING, logger="lit_dr.data.teacher_scores"):
        table = load_teacher_scores(path, Store("d1", "d2"), Store("q1", "q2"))
    assert table == {0: {0: 1.0}, 1: {1: 5.0}}
    [message] = [r.getMessage() for r in caplog.records]
    assert "3 of 5 teacher scores name unknown" in message and "document 'dX' on line 2" in message

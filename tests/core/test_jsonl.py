"""The tolerant JSONL reader every run-folder log goes through, and its appender."""

from __future__ import annotations

import json
import threading

from lmpipe.core.jsonl import append_jsonl, read_jsonl


def test_torn_undecodable_and_non_object_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 2.5}\n'
                     b'\n   \n'                       # blank: neither a record nor skipped
                     b'{"step": 2, "lo\n'             # torn by a concurrent writer
                     b'\xff\xfe{"step": 3}\n'         # not UTF-8
                     b'[1, 2]\n'                      # JSON, but not an object
                     b'{"step": 4, "name": "caf\xc3\xa9"}\n'
                     b'{"step": 5')                   # the writer's unfinished last line
    records, skipped = read_jsonl(path)
    assert records == [{"step": 1, "loss": 2.5}, {"step": 4, "name": "café"}]
    assert skipped == 4
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_concurrent_appends_never_interleave_inside_a_line(tmp_path):
    path = tmp_path / "evals.jsonl"
    payload = "x" * 5000  # lines longer than a pipe buffer

    def writer(k: int) -> None:
        for i in range(20):
            append_jsonl(path, [{"writer": k, "i": i, "pad": payload}, {"writer": k, "i": -i}])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records, skipped = read_jsonl(path)
    assert skipped == 0 and len(records) == 4 * 20 * 2
    for k in range(4):
        assert [r["i"] for r in records if r["writer"] == k] == \
            [v for i in range(20) for v in (i, -i)]
    for j, r in enumerate(records):  # each batch lands whole: a record, then its partner
        if "pad" in r:
            assert records[j + 1] == {"writer": r["writer"], "i": -r["i"]}
    assert json.loads(path.read_text().splitlines()[0])["pad"] == payload

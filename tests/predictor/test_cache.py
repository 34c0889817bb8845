"""The plan dataset's cache file (workbench.predictor.cache): checksummed lines, checked reads, appends."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.predictor.cache import _CacheWriter, _line_sha, _read_cache, _rewrite_cache, _signed


def _plan(pid: str, w: int, **fields: float) -> dict:
    return {"type": "plan", "plan_id": pid, "w_bits": [w], "a_bits": [8], **fields}


def test_line_checksum_covers_the_fields_and_the_key() -> None:
    record = _plan("p1", 4, accuracy=0.5)
    sha = _line_sha(record, "k")
    assert len(sha) == 16 and _signed(record, "k") == {**record, "sha": sha}
    assert _line_sha({**record, "sha": "x"}, "k") == sha  # the sha field itself is left out
    assert _line_sha(record, "other") != sha and _line_sha({**record, "accuracy": 0.6}, "k") != sha


def test_read_cache_keeps_good_lines_and_names_the_bad_ones(tmp_path: Path) -> None:
    header = _signed({"type": "header", "key": "k", "layer_names": ["a"], "checksums": 1}, "k")
    good = _signed(_plan("p1", 4, accuracy=0.5), "k")
    edited = {**_signed(_plan("p2", 2, accuracy=0.4), "k"), "accuracy": 0.9}
    foreign = _signed(_plan("p3", 3), "other")
    unsigned = _plan("p4", 6)
    lines = [json.dumps(r) for r in (header, good, edited, foreign, unsigned)]
    path = tmp_path / "plans.jsonl"
    path.write_text("\n".join([*lines, '{"type": "plan", "pla']))  # the last line cut short
    contents = _read_cache(path)
    assert contents.header == header and list(contents.records) == ["p1"]
    assert contents.good_lines == lines[:2]
    assert [n for n, _ in contents.problems] == [3, 4, 5, 6]
    assert "plan p2 fails its checksum" in contents.problems[0][1]
    assert "plan p4 has no checksum" in contents.problems[2][1]
    assert contents.problems[3][1] == "cut short or not JSON"
    assert contents.describe_problems(limit=2).endswith("; and 2 more")
    assert _read_cache(tmp_path / "missing.jsonl").header is None


def test_writer_starts_a_new_line_after_one_cut_short_and_rewrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "plans.jsonl"
    header = _signed({"type": "header", "key": "k", "layer_names": ["a"], "checksums": 1}, "k")
    writer = _CacheWriter(path, header)  # a new file: the header first
    writer.write(_signed(_plan("p1", 4), "k"))
    writer.close()
    path.write_text(path.read_text() + '{"type": "pl')  # a kill mid-line
    writer = _CacheWriter(path, header)  # an existing file: no second header
    writer.write(_signed(_plan("p2", 2), "k"))
    writer.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[2] == '{"type": "pl' and json.loads(lines[3])["plan_id"] == "p2"
    contents = _read_cache(path)
    assert list(contents.records) == ["p1", "p2"] and [n for n, _ in contents.problems] == [3]
    _rewrite_cache(path, contents.good_lines)
    assert path.read_text() == "".join(f"{line}\n" for line in contents.good_lines)
    assert not (tmp_path / ".plans.jsonl.tmp").exists()

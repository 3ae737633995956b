"""``staging.replace_dir``: a whole output folder or nothing, and never a folder the harness did not write."""

from __future__ import annotations

import json
import os

import pytest

from harness.errors import InputError
from harness.staging import MARKER, marker_kind, replace_dir


def _build(files: dict[str, str]):
    def build(tmp):
        for name, text in files.items():
            (tmp / name).write_text(text)
    return build


def test_a_new_folder_is_built_whole_with_its_marker_written_last(tmp_path):
    out = replace_dir(tmp_path / "a" / "b", _build({"x.txt": "1"}), flag="--out", kind="prepare")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "x.txt"]
    assert marker_kind(out) == "prepare" and json.loads((out / MARKER).read_text()) == {"kind": "prepare"}


def test_a_failed_build_leaves_nothing_not_even_the_parents_it_made(tmp_path):
    def broken(tmp):
        (tmp / "half.txt").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError, match=r"^--out .*/new/out: cannot write \(No space left on device\)$"):
        replace_dir(tmp_path / "new" / "out", broken, flag="--out", kind="prepare")
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_output_is_replaced_only_with_overwrite_and_kept_when_the_build_fails(tmp_path):
    out = replace_dir(tmp_path / "out", _build({"old.txt": "old"}), flag="--out", kind="prepare")
    with pytest.raises(InputError, match="not empty"):
        replace_dir(out, _build({"new.txt": "new"}), flag="--out", kind="prepare")
    with pytest.raises(RuntimeError):
        replace_dir(out, lambda tmp: (_ for _ in ()).throw(RuntimeError("killed")), flag="--out", kind="prepare",
                    overwrite=True)
    assert (out / "old.txt").read_text() == "old"
    replace_dir(out, _build({"new.txt": "new"}), flag="--out", kind="prepare", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_rename_puts_the_earlier_output_back(tmp_path, monkeypatch):
    out = replace_dir(tmp_path / "out", _build({"old.txt": "old"}), flag="--out", kind="report")
    real = os.replace

    def fail_the_swap(src, dst):
        if str(src).startswith(str(tmp_path / ".tmp-out-")):
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_the_swap)
    with pytest.raises(InputError, match="cannot write"):
        replace_dir(out, _build({"new.txt": "new"}), flag="--out", kind="report", overwrite=True)
    assert (out / "old.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_what_a_killed_replacement_left_is_swept_and_a_moved_aside_output_restored(tmp_path):
    (tmp_path / ".tmp-out-abcd1234").mkdir()  # a build killed half-way
    aside = tmp_path / ".tmp-old-out-efgh5678"
    (aside / "out").mkdir(parents=True)  # killed between moving the old output aside and renaming the new in
    (aside / "out" / "old.txt").write_text("old")
    (aside / "out" / MARKER).write_text(json.dumps({"kind": "report"}))
    replace_dir(tmp_path / "out", _build({"new.txt": "new"}), flag="--out", kind="report", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "new.txt").read_text() == "new"

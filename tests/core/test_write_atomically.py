"""write_atomically: a directory is replaced whole or not at all, with a fresh or a named staging
folder (the named one is how every process of a distributed checkpoint finds it)."""

from __future__ import annotations

import pytest

from mambaverse.pretrained import write_atomically


def fill(text: str):
    def write(folder):
        (folder / "a.txt").write_text(text)

    return write


def fail_halfway(folder):
    (folder / "a.txt").write_text("half")
    raise RuntimeError("crash while writing")


@pytest.mark.parametrize("named", [False, True])
def test_replaced_whole_or_not_at_all(tmp_path, named):
    target = tmp_path / "out" / "ckpt"
    staging = target.with_name(".ckpt.partial") if named else None
    write_atomically(target, fill("old"), staging=staging)
    if named:  # a folder left by a crash is emptied first, so none of its files survive
        staging.mkdir()
        (staging / "stale.txt").write_text("from a crashed save")

    with pytest.raises(RuntimeError, match="crash while writing"):
        write_atomically(target, fail_halfway, staging=staging)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "old"

    if named:
        staging.mkdir()
        (staging / "stale.txt").write_text("from a crashed save")
    write_atomically(target, fill("new"), staging=staging)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["ckpt"]  # no staging or old copy left

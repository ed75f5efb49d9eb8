"""write_atomically: a directory is replaced whole or not at all, with a fresh or a named staging
folder (the named one is how every process of a distributed checkpoint finds it)."""

from __future__ import annotations

import os

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


def test_files_reach_the_disk_before_the_move_and_the_move_after(tmp_path, monkeypatch):
    from mambaverse import pretrained

    events = []
    monkeypatch.setattr(pretrained, "_sync", lambda path: events.append(("sync", path.name)))
    real_replace = pretrained.os.replace
    monkeypatch.setattr(
        pretrained.os, "replace", lambda a, b: (events.append(("move", b.name)), real_replace(a, b))
    )

    def write(folder):
        (folder / "sub").mkdir()
        (folder / "a.txt").write_text("a")
        (folder / "sub" / "b.txt").write_text("b")

    target = tmp_path / "ckpt"
    write_atomically(target, write)
    move = events.index(("move", "ckpt"))
    assert {("sync", "a.txt"), ("sync", "b.txt"), ("sync", "sub")} <= set(events[:move])
    assert events[move + 1 :] == [("sync", tmp_path.name)]


def test_a_save_interrupted_between_its_moves_is_named_when_loading(tmp_path):
    import mambaverse

    model = mambaverse.create_model("vim_micro")
    mambaverse.save_pretrained(model, tmp_path / "model")
    (tmp_path / "model").rename(tmp_path / ".model.old-123")  # what a crash there leaves
    with pytest.raises(mambaverse.ConfigError, match=r"a save was interrupted.*\.model\.old-123"):
        mambaverse.load_pretrained(tmp_path / "model")


def test_save_pretrained_replaces_an_earlier_save_and_nothing_else(tmp_path, monkeypatch):
    import mambaverse

    model = mambaverse.create_model("vim_micro")
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text("code")
    with pytest.raises(mambaverse.ConfigError) as err:
        mambaverse.save_pretrained(model, project)
    assert "holds files that are not a saved model (data, train.py)" in str(err.value)
    assert (project / "train.py").read_text() == "code" and (project / "data").is_dir()

    (tmp_path / "weights.safetensors").write_text("x")
    with pytest.raises(mambaverse.ConfigError, match=r"weights\.safetensors is a file"):
        mambaverse.save_pretrained(model, tmp_path / "weights.safetensors")

    saved = mambaverse.save_pretrained(model, tmp_path / "model")
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    mambaverse.save_pretrained(model, saved)  # over an earlier save: replaced
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(saved).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700

    monkeypatch.chdir(tmp_path / "model")  # the working directory: replacing it would pull it
    for target in (".", tmp_path):  # out from under the process
        with pytest.raises(mambaverse.ConfigError, match="is the working directory or holds it"):
            mambaverse.save_pretrained(model, target)
    assert os.getcwd() == str(tmp_path / "model") and mambaverse.load_pretrained(".") is not None

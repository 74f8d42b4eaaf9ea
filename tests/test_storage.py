"""One suite, both bucket backends: generations, preconditions, listing, CRC32C."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from envmgr.notebooks.storage.base import NotFound, PreconditionFailed, crc32c


def test_write_read_generations_and_preconditions(storage) -> None:  # type: ignore[no-untyped-def]
    b = storage.test_bucket
    assert storage.stat(b, "notebooks/a.ipynb") is None
    with pytest.raises(NotFound):
        storage.read(b, "notebooks/a.ipynb")
    first = storage.write(b, "notebooks/a.ipynb", b"one", if_generation_match=0)
    assert first.size == 3 and first.crc32c == crc32c(b"one") and first.generation > 0
    with pytest.raises(PreconditionFailed):  # 0 means "must not exist"
        storage.write(b, "notebooks/a.ipynb", b"two", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        storage.write(b, "notebooks/a.ipynb", b"two", if_generation_match=first.generation + 1)
    second = storage.write(b, "notebooks/a.ipynb", b"two", if_generation_match=first.generation)
    assert second.generation != first.generation
    data, info = storage.read(b, "notebooks/a.ipynb")
    assert data == b"two" and info.generation == second.generation
    assert storage.stat(b, "notebooks/a.ipynb").generation == second.generation
    if storage.name != "gcs":  # the emulator ignores delete preconditions (fake-gcs-server
        # issue #1282, fixed upstream in PR #2343, after the bundled build); GCS enforces them
        with pytest.raises(PreconditionFailed):
            storage.delete(b, "notebooks/a.ipynb", if_generation_match=first.generation)
    storage.delete(b, "notebooks/a.ipynb", if_generation_match=second.generation)
    with pytest.raises(NotFound):
        storage.delete(b, "notebooks/a.ipynb")
    assert storage.stat(b, "notebooks/a.ipynb") is None


def test_list_by_prefix(storage) -> None:  # type: ignore[no-untyped-def]
    b = storage.test_bucket
    for name in ("notebooks/x.ipynb", "notebooks/sub/y.ipynb", "locks/x.ipynb.json"):
        storage.write(b, name, b"{}")
    assert [o.name for o in storage.list(b, "notebooks/")] == ["notebooks/sub/y.ipynb",
                                                               "notebooks/x.ipynb"]
    assert [o.name for o in storage.list(b, "locks/")] == ["locks/x.ipynb.json"]
    assert len(storage.list(b)) == 3


def test_object_names_cannot_escape(storage) -> None:  # type: ignore[no-untyped-def]
    for bad in ("../x", "/etc/passwd", "a/../../b", "a\x00b", ""):
        with pytest.raises(ValueError):
            storage.write(storage.test_bucket, bad, b"x")


def _race(root: str, bucket: str, gen: int, n: int, q: multiprocessing.Queue) -> None:
    from envmgr.notebooks.storage.local import LocalStorage
    try:
        LocalStorage(Path(root)).write(bucket, "notebooks/r.ipynb", f"p{n}".encode(),
                                       if_generation_match=gen)
        q.put(n)
    except PreconditionFailed:
        q.put(None)


def test_local_preconditions_hold_across_processes(tmp_path: Path) -> None:
    from envmgr.notebooks.storage.local import LocalStorage
    st = LocalStorage(tmp_path)
    gen = st.write("bk", "notebooks/r.ipynb", b"base").generation
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), "bk", gen, n, q)) for n in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    winners = [w for w in (q.get(timeout=10) for _ in procs) if w is not None]
    assert len(winners) == 1
    assert st.read("bk", "notebooks/r.ipynb")[0] == f"p{winners[0]}".encode()

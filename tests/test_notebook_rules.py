"""Property test of the lock and save rules over random interleavings of open, save, renew,
expire and close by several users: never two lock holders, never a lost update."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from envmgr.notebooks.rules import (
    NOTEBOOKS,
    BadPath,
    Locked,
    acquire_lock,
    clean_path,
    delocalize,
    read_lock,
    release_lock,
    sync_status,
)
from envmgr.notebooks.storage.local import LocalStorage

USERS = ["ann", "bob"]  # two users make the dangerous interleavings common
TTL = 180.0
PATH = "analysis/model.ipynb"


@dataclass
class Copy:
    """What one user's runtime holds: the file and the bucket generation it came from."""
    data: bytes
    base_generation: int
    base_crc: str
    lock_until: datetime | None = None  # when this user believes its lock runs out
    saved: list[bytes] = field(default_factory=list)


class NotebookRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.st = LocalStorage(self.dir)
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        info = self.st.write("ws", NOTEBOOKS + PATH, b"v0")
        self.history = [(info.generation, b"v0")]  # every version the notebook had
        self.copies: dict[str, Copy] = {}
        self.n = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(user=st.sampled_from(USERS))
    def open_edit(self, user: str) -> None:
        try:
            lock = acquire_lock(self.st, "ws", PATH, user, TTL, self.now)
        except Locked as exc:
            assert exc.lock.holder != user and exc.lock.expires_at > self.now
            return
        data, info = self.st.read("ws", NOTEBOOKS + PATH)
        self.copies[user] = Copy(data, info.generation, info.crc32c, lock.expires_at)

    @rule(user=st.sampled_from(USERS))
    def save(self, user: str) -> None:
        copy = self.copies.get(user)
        if copy is None:
            return
        self.n += 1
        data = f"{user}-{self.n}".encode()
        before = self.st.stat("ws", NOTEBOOKS + PATH).generation
        res = delocalize(self.st, "ws", PATH, data, copy.base_generation, copy.base_crc, user,
                         TTL, self.now)
        copy.saved.append(data)
        if res.status == "saved":
            # Only a copy of the latest version may replace it: nobody's update is lost.
            assert before == copy.base_generation
            self.history.append((res.generation, data))
            copy.base_generation, copy.base_crc = res.generation, res.crc32c
            copy.lock_until = self.now + timedelta(seconds=TTL)
        else:
            assert res.status == "conflict" and res.conflict_path
            assert self.st.read("ws", NOTEBOOKS + res.conflict_path)[0] == data
            assert self.st.stat("ws", NOTEBOOKS + PATH).generation == before

    @rule(user=st.sampled_from(USERS))
    def renew(self, user: str) -> None:
        copy = self.copies.get(user)
        if copy is None or copy.lock_until is None:
            return
        try:
            copy.lock_until = acquire_lock(self.st, "ws", PATH, user, TTL, self.now).expires_at
        except Locked:
            copy.lock_until = None  # it expired and someone else took it

    @rule(seconds=st.sampled_from([90, 200]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(user=st.sampled_from(USERS))
    def close(self, user: str) -> None:
        copy = self.copies.pop(user, None)
        if copy is not None:
            release_lock(self.st, "ws", PATH, user, self.now)

    @invariant()
    def one_holder_at_most(self) -> None:
        believers = [u for u, c in self.copies.items()
                     if c.lock_until is not None and c.lock_until > self.now]
        lock = read_lock(self.st, "ws", PATH)
        assert len(believers) <= 1, believers
        if believers:
            assert lock is not None and lock.holder == believers[0]

    @invariant()
    def bucket_holds_the_latest_saved_version(self) -> None:
        data, info = self.st.read("ws", NOTEBOOKS + PATH)
        assert (info.generation, data) == self.history[-1]


NotebookRules.TestCase.settings = settings(max_examples=300, stateful_step_count=30,
                                           deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_lock_and_save_rules = NotebookRules.TestCase


def test_unchanged_saves_do_not_touch_the_bucket(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    info = st.write("ws", NOTEBOOKS + PATH, b"same")
    res = delocalize(st, "ws", PATH, b"same", info.generation, info.crc32c, "ann", TTL, now)
    assert res.status == "unchanged" and st.stat("ws", NOTEBOOKS + PATH) == info
    assert sync_status(st, "ws", PATH, b"same", info.generation, info.crc32c) == "live"
    assert sync_status(st, "ws", PATH, b"edited", info.generation, info.crc32c) == \
        "local_changed"
    st.write("ws", NOTEBOOKS + PATH, b"theirs")
    assert sync_status(st, "ws", PATH, b"same", info.generation, info.crc32c) == \
        "remote_changed"
    assert sync_status(st, "ws", "gone.ipynb", b"x", 1, "") == "remote_not_found"


def test_conflict_copies_never_overwrite_each_other(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base = st.write("ws", NOTEBOOKS + PATH, b"v0")
    st.write("ws", NOTEBOOKS + PATH, b"v1")
    copies = {delocalize(st, "ws", PATH, f"mine-{i}".encode(), base.generation, base.crc32c,
                         "ann", None, now).conflict_path for i in range(3)}
    assert len(copies) == 3
    assert sorted(st.read("ws", NOTEBOOKS + c)[0] for c in copies) == \
        [b"mine-0", b"mine-1", b"mine-2"]


def test_a_standing_conflict_keeps_one_copy_and_never_takes_anothers(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base = st.write("ws", NOTEBOOKS + PATH, b"v0")
    st.write("ws", NOTEBOOKS + PATH, b"theirs")
    first = delocalize(st, "ws", PATH, b"mine-1", base.generation, base.crc32c, "ann", None, now)
    assert first.status == "conflict" and first.conflict_generation > 0
    reuse = (first.conflict_path or "", first.conflict_generation)
    again = delocalize(st, "ws", PATH, b"mine-2", base.generation, base.crc32c, "ann", None,
                       now, reuse)
    assert again.conflict_path == first.conflict_path  # updated in place
    assert st.read("ws", NOTEBOOKS + reuse[0])[0] == b"mine-2"
    # The copy changed since (someone edited it): it is left alone, a new one is made.
    stale = delocalize(st, "ws", PATH, b"mine-3", base.generation, base.crc32c, "ann", None,
                       now, reuse)
    assert stale.conflict_path != first.conflict_path
    assert st.read("ws", NOTEBOOKS + reuse[0])[0] == b"mine-2"
    # A runtime naming a notebook that is no conflict copy of its own gets a new copy too.
    other = st.write("ws", NOTEBOOKS + "other.ipynb", b"bob's")
    forged = delocalize(st, "ws", PATH, b"mine-4", base.generation, base.crc32c, "ann", None,
                        now, ("other.ipynb", other.generation))
    assert forged.conflict_path != "other.ipynb"
    assert st.read("ws", NOTEBOOKS + "other.ipynb")[0] == b"bob's"
    assert st.read("ws", NOTEBOOKS + PATH)[0] == b"theirs"


@pytest.mark.parametrize("bad", ["../x.ipynb", "/etc/x.ipynb", "a/../../x.ipynb", "a\x00.ipynb",
                                 "", "a//b.ipynb", "a\\b.ipynb", "./x.ipynb"])
def test_paths_cannot_escape(bad: str) -> None:
    with pytest.raises(BadPath):
        clean_path(bad)


def test_only_notebooks_are_kept_in_a_bucket() -> None:
    with pytest.raises(BadPath, match=r"holds notebooks only: the path must end in \.ipynb"):
        clean_path("data.csv")
    assert clean_path("data.csv", notebook=False) == "data.csv"


def test_a_stale_copy_never_overwrites_a_newer_save(tmp_path: Path) -> None:
    """Ann's lock expires; Bob edits, saves and closes; Ann's late save must not win."""
    st = LocalStorage(tmp_path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    st.write("ws", NOTEBOOKS + PATH, b"v0")
    acquire_lock(st, "ws", PATH, "ann", TTL, t0)
    _, ann = st.read("ws", NOTEBOOKS + PATH)
    later = t0 + timedelta(seconds=TTL + 1)
    acquire_lock(st, "ws", PATH, "bob", TTL, later)
    _, bob = st.read("ws", NOTEBOOKS + PATH)
    assert delocalize(st, "ws", PATH, b"bob's", bob.generation, bob.crc32c, "bob", TTL,
                      later).status == "saved"
    release_lock(st, "ws", PATH, "bob", later)
    res = delocalize(st, "ws", PATH, b"ann's", ann.generation, ann.crc32c, "ann", TTL, later)
    assert res.status == "conflict" and "changed in the bucket" in res.message
    assert st.read("ws", NOTEBOOKS + PATH)[0] == b"bob's"
    assert st.read("ws", NOTEBOOKS + res.conflict_path)[0] == b"ann's"

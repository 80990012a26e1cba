"""The compact folder listing and the per-user listing cache (vmspop.listing, MailStore.scan)."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmspop.listing
from vmspop.listing import Listing, build_listing
from vmspop.names import StoredMessage, arrival_of, make_uid, parse_name
from vmspop.store import LISTING_CACHE_MESSAGES, LISTING_FILE, NEWMAIL, MailStore

USER = "jones"
LONG_AGO = 1_600_000_000  # a directory mtime far older than the settle time


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    s = MailStore(tmp_path / "mail", hostname="test.example")
    s.create_mailbox(USER)
    return s


def settle(store: MailStore, user: str = USER) -> None:
    """Make new/ and cur/ look unchanged for long, as between two polls."""
    for sub in ("new", "cur"):
        os.utime(store.folder(user, NEWMAIL) / sub, (LONG_AGO, LONG_AGO))


def slow_way(user: str, path: str) -> StoredMessage:
    """What the general parser makes of a file name that carries its sizes."""
    parts = parse_name(os.path.basename(path))
    assert parts is not None
    base, fields, _ = parts
    arrival = arrival_of(base)
    assert arrival is not None
    return StoredMessage(path, base, arrival, int(fields["S"]), int(fields["W"]),
                         make_uid(user, arrival, base))


class ScandirCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.scandir

        def counting(path):  # type: ignore[no-untyped-def]
            self.calls += 1
            return real(path)

        monkeypatch.setattr(vmspop.listing.os, "scandir", counting)


# -- the fast reading of names agrees with the general one ---------------------------------

_name_part = st.text(alphabet="abcdefXYZ0123456789_-.M", min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(sec=st.integers(0, 10**12 - 1), usec=st.one_of(st.none(), st.integers(0, 999_999)),
       mid=_name_part, host=_name_part, size=st.integers(0, 10**9), wire=st.integers(0, 10**9),
       info=st.sampled_from(["", ":2,", ":2,S", ":2,FRS", ":1,x"]), sub=st.sampled_from(["new", "cur"]))
def test_fast_names_read_like_the_general_parser(tmp_path_factory: pytest.TempPathFactory, sec: int,
                                                 usec: int | None, mid: str, host: str, size: int,
                                                 wire: int, info: str, sub: str) -> None:
    """A name read by the fast path gives the same base, arrival, sizes and UIDL as parse_name."""
    folder = tmp_path_factory.mktemp("f")
    (folder / sub).mkdir()
    micro = f"M{usec}" if usec is not None else ""
    name = f"{sec}.{mid}{micro}{mid}.{host},S={size},W={wire}{info}"
    (folder / sub / name).write_bytes(b"")

    def describe(directory: str, n: str) -> StoredMessage | None:
        raise AssertionError("the fast path must read this name")  # pragma: no cover

    problems: list[str] = []
    listing = build_listing(USER, os.fsencode(folder), describe, problems, (sub,))
    assert problems == [] and len(listing) == 1
    assert listing[0] == slow_way(USER, str(folder / sub / name))
    assert listing.wire[0] == wire and listing.uid(0) == listing[0].uid


def test_listing_orders_by_arrival_then_base_and_drops_duplicate_bases(tmp_path: Path) -> None:
    """Equal arrival times are ordered by base; a second file of one base is skipped and reported."""
    for sub in ("new", "cur"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new" / "1700000000.M5P2.b,S=1,W=2").write_bytes(b"")
    (tmp_path / "new" / "1700000000.M5P1.a,S=1,W=2").write_bytes(b"")
    (tmp_path / "cur" / "1700000000.M5P1.a,S=1,W=2:2,S").write_bytes(b"")  # same base as in new/
    (tmp_path / "cur" / "1699999999.M9P9.z,S=3,W=4:2,").write_bytes(b"")
    problems: list[str] = []
    listing = build_listing(USER, os.fsencode(tmp_path), lambda d, n: None, problems)
    assert [m.base for m in listing] == ["1699999999.M9P9.z", "1700000000.M5P1.a", "1700000000.M5P2.b"]
    assert [bytes(listing.name(i)) for i in range(3)][0] == b"cur/1699999999.M9P9.z,S=3,W=4:2,"
    assert len(problems) == 1 and "duplicate of" in problems[0]
    assert listing.total_wire == 8


def test_head_and_uid_cache(tmp_path: Path) -> None:
    """head(n) keeps the oldest n; UIDLs are computed once and then read back unchanged."""
    (tmp_path / "new").mkdir()
    for i in range(5):
        (tmp_path / "new" / f"170000000{i}.M0P1.h,S=1,W=2").write_bytes(b"")
    listing = build_listing(USER, os.fsencode(tmp_path), lambda d, n: None, [])
    first = [listing.uid(i) for i in range(5)]
    assert first == [m.uid for m in listing]
    assert [listing.uid(i) for i in range(5)] == first  # from the cache this time
    assert [listing.raw_path(i) for i in range(5)] == [os.fsencode(m.path) for m in listing]
    head = listing.head(2)
    assert len(head) == 2 and [m.base for m in head] == [m.base for m in listing[:2]]
    assert head.total_wire == 4 and listing.head(0) is listing and listing.head(9) is listing


def test_listing_of_many_messages_is_compact(tmp_path: Path) -> None:
    """About 80 octets a message once built, and a modest peak while building (issue 5: 64 MiB
    for a 100,000-message server)."""
    (tmp_path / "new").mkdir()
    count = 20_000
    for i in range(count):
        (tmp_path / "new" / f"{1_700_000_000 + i * 7 % count}.M{i:06d}P4242Q{i}R0123abcd.host.example,"
                            f"S=1000,W=1030").write_bytes(b"")
    tracemalloc.start()
    try:
        listing = build_listing(USER, os.fsencode(tmp_path), lambda d, n: None, [])
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listing) == count
    assert kept / count < 100, f"{kept / count:.0f} octets kept per message"
    assert peak / count < 200, f"{peak / count:.0f} octets at peak per message"
    arrivals = [m.arrival for m in listing[:50]]
    assert arrivals == sorted(arrivals)


# -- the cache in MailStore.scan -------------------------------------------------------------


def test_unchanged_folder_is_not_read_again(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second scan of a folder whose directories have not changed lists nothing."""
    store.deliver([USER], [b"one\n"])
    settle(store)
    first = store.scan(USER, NEWMAIL)
    counter = ScandirCounter(monkeypatch)
    again = store.scan(USER, NEWMAIL)
    assert counter.calls == 0 and again == first and len(again) == 1


def test_a_delivery_is_seen_at_the_next_scan(store: MailStore) -> None:
    """Delivering changes new/'s mtime, so the kept listing is not used."""
    store.deliver([USER], [b"one\n"])
    settle(store)
    assert len(store.scan(USER, NEWMAIL)) == 1
    store.deliver([USER], [b"two\n"])
    assert len(store.scan(USER, NEWMAIL)) == 2


def test_recently_changed_folder_is_listed_every_time(store: MailStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory changed within the settle time could change again without its mtime moving:
    such a listing is not kept."""
    store.deliver([USER], [b"one\n"])
    store.scan(USER, NEWMAIL)
    counter = ScandirCounter(monkeypatch)
    store.scan(USER, NEWMAIL)
    assert counter.calls == 2  # new/ and cur/


def test_a_change_with_the_same_mtime_after_settling_is_impossible_to_miss(
        store: MailStore) -> None:
    """Once kept, a change made now gives the directory a new mtime, never the old one."""
    store.deliver([USER], [b"one\n"])
    settle(store)
    store.scan(USER, NEWMAIL)
    before = os.stat(store.folder(USER, NEWMAIL) / "new").st_mtime_ns
    [path] = store.deliver([USER], [b"two\n"])
    assert os.stat(path.parent).st_mtime_ns != before
    assert [Path(m.path).name for m in store.scan(USER, NEWMAIL)][-1] == path.name


def test_problems_are_reported_again_from_a_kept_listing(store: MailStore) -> None:
    """What was skipped is logged at each login, also when the listing is reused."""
    store.deliver([USER], [b"one\n"])
    (store.folder(USER, NEWMAIL) / "new" / "1700000000.M1P1.stray").mkdir()
    settle(store)
    for _ in range(2):
        problems: list[str] = []
        assert len(store.scan(USER, NEWMAIL, problems=problems)) == 1
        assert len(problems) == 1 and "not a regular file" in problems[0]


def test_cache_keeps_the_most_recent_listings_within_its_budget(
        store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LISTING_CACHE_MESSAGES, the least recently used user's listing is dropped."""
    monkeypatch.setattr(vmspop.store, "LISTING_CACHE_MESSAGES", 3)
    users = ["a1", "b2", "c3"]
    for user in users:
        store.create_mailbox(user)
        store.deliver([user], [b"1\n"], arrival=1_600_000_000)
        store.deliver([user], [b"2\n"], arrival=1_600_000_001)
        settle(store, user)
        store.scan(user, NEWMAIL)
    for user in users:  # so that only what is kept in memory can spare a listing
        (store.folder(user, NEWMAIL) / LISTING_FILE).unlink()
    counter = ScandirCounter(monkeypatch)
    store.scan("c3", NEWMAIL)
    assert counter.calls == 0  # the newest is kept
    store.scan("a1", NEWMAIL)
    assert counter.calls == 2  # the oldest was dropped
    assert LISTING_CACHE_MESSAGES >= 100_000  # a 100,000-message folder fits by default


def test_snapshot_is_not_changed_by_a_later_scan(store: MailStore) -> None:
    """A session keeps the listing it was given, whatever later scans find."""
    store.deliver([USER], [b"one\n"])
    snapshot = store.scan(USER, NEWMAIL)
    store.deliver([USER], [b"two\n"])
    assert len(store.scan(USER, NEWMAIL)) == 2 and len(snapshot) == 1


def test_empty_listing() -> None:
    """An empty listing behaves as an empty sequence."""
    empty = Listing.empty(USER, b"/nowhere")
    assert len(empty) == 0 and list(empty) == [] and empty == [] and empty.total_wire == 0
    with pytest.raises(IndexError):
        empty[0]


def test_settle_time_is_respected(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing becomes reusable once its directories are older than MTIME_SETTLE_SECONDS."""
    store.deliver([USER], [b"one\n"])
    now = time.time()
    for sub in ("new", "cur"):
        os.utime(store.folder(USER, NEWMAIL) / sub, (now - 1, now - 1))
    store.scan(USER, NEWMAIL)  # 1 s old: not kept
    counter = ScandirCounter(monkeypatch)
    store.scan(USER, NEWMAIL)
    assert counter.calls == 2
    for sub in ("new", "cur"):
        os.utime(store.folder(USER, NEWMAIL) / sub, (now - 3, now - 3))
    store.scan(USER, NEWMAIL)  # 3 s old: kept
    store.scan(USER, NEWMAIL)
    assert counter.calls == 4


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(st.tuples(st.integers(1_700_000_000, 1_700_000_003), st.integers(0, 3),
                                  st.sampled_from(["a", "b", "c", "host.example"]),
                                  st.sampled_from(["new", "cur"])), min_size=0, max_size=40),
       slice_size=st.sampled_from([1, 2, 3, 7, 16_384]))
def test_order_matches_sorting_by_arrival_then_base(tmp_path_factory: pytest.TempPathFactory,
                                                    entries: list[tuple[int, int, str, str]],
                                                    slice_size: int) -> None:
    """Sorting in slices and merging gives the order of sorting everything by (arrival, base),
    with one file per base (many equal arrival times here, in both sub-directories)."""
    folder = tmp_path_factory.mktemp("f")
    for sub in ("new", "cur"):
        (folder / sub).mkdir()
    expected: dict[str, float] = {}
    for sec, usec, host, sub in entries:
        base = f"{sec}.M{usec}P1.{host}"
        (folder / sub / f"{base},S=1,W=2{':2,S' if sub == 'cur' else ''}").write_bytes(b"")
        expected[base] = arrival_of(base)  # type: ignore[assignment]
    problems: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vmspop.listing, "SORT_SLICE", slice_size)
        listing = build_listing(USER, os.fsencode(folder), lambda d, n: None, problems)
    assert [m.base for m in listing] == sorted(expected, key=lambda b: (expected[b], b))
    assert len(problems) == len({(s, u, h, sub) for s, u, h, sub in entries}) - len(expected)


# -- the listing saved next to the folder ----------------------------------------------------


def saved_store(store: MailStore) -> MailStore:
    """A second store on the same mail root: another worker, another node, or a restart."""
    store.deliver([USER], [b"one\n"], arrival=1_600_000_000)
    store.deliver([USER], [b"two\n"], arrival=1_600_000_001)
    (store.folder(USER, NEWMAIL) / "new" / "1700000000.M1P1.stray").mkdir()
    settle(store)
    store.scan(USER, NEWMAIL)
    return MailStore(store.root, hostname="test.example")


def test_another_process_uses_the_saved_listing(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing built once is saved beside the folder; another store of the same root loads it
    without listing the directories, with the same messages, UIDLs and problems."""
    first = store.scan(USER, NEWMAIL)
    other = saved_store(store)
    counter = ScandirCounter(monkeypatch)
    problems: list[str] = []
    loaded = other.scan(USER, NEWMAIL, problems=problems)
    assert counter.calls == 0
    assert loaded == store.scan(USER, NEWMAIL) and len(loaded) == 2 and first == []
    assert [loaded.uid(i) for i in range(2)] == [m.uid for m in store.scan(USER, NEWMAIL)]
    assert len(problems) == 1 and "not a regular file" in problems[0]
    assert os.listdir(store.folder(USER, NEWMAIL) / "tmp") == []


def test_saved_listing_of_another_state_is_not_used(store: MailStore) -> None:
    """After a delivery the saved listing describes an older folder, and is ignored."""
    other = saved_store(store)
    store.deliver([USER], [b"three\n"])
    assert len(other.scan(USER, NEWMAIL)) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "garbage", "empty"])
def test_damaged_saved_listing_is_built_again(store: MailStore, monkeypatch: pytest.MonkeyPatch,
                                              damage: str) -> None:
    """A saved listing that is cut short or altered is not used: the folder is listed again."""
    other = saved_store(store)
    path = store.folder(USER, NEWMAIL) / LISTING_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-3]
    elif damage == "flip":
        data[-5] ^= 0x01
    elif damage == "magic":
        data[:7] = b"VMSPOP!"
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    counter = ScandirCounter(monkeypatch)
    assert len(other.scan(USER, NEWMAIL)) == 2
    assert counter.calls == 2


def test_saved_listing_cannot_name_files_outside_the_folder(store: MailStore) -> None:
    """A well-formed file (right checksum) whose names leave the folder is refused."""
    other = saved_store(store)
    path = store.folder(USER, NEWMAIL) / LISTING_FILE
    folder = os.fsencode(store.folder(USER, NEWMAIL))
    stamp = [[os.stat(store.folder(USER, NEWMAIL) / sub).st_ino,
              os.stat(store.folder(USER, NEWMAIL) / sub).st_mtime_ns] for sub in ("new", "cur")]
    from array import array
    blob = b"new/../../../etc/passwd\0"
    evil = Listing(USER, folder, blob, array("I", [0]), array("I", [10]))
    with open(path, "wb") as f:
        evil.save(f, stamp, [])
    with open(path, "rb") as f:
        assert Listing.load(USER, folder, f, stamp) is None
    assert all(m.path.startswith(str(store.folder(USER, NEWMAIL))) and ".." not in m.path
               for m in other.scan(USER, NEWMAIL))


def test_listing_that_cannot_be_saved_is_still_served(store: MailStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while saving leaves no partial file and changes nothing for the session."""
    import errno

    def full(self: Listing, f: object, stamp: object, problems: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Listing, "save", full)
    store.deliver([USER], [b"one\n"])
    settle(store)
    assert len(store.scan(USER, NEWMAIL)) == 1
    assert not (store.folder(USER, NEWMAIL) / LISTING_FILE).exists()
    assert os.listdir(store.folder(USER, NEWMAIL) / "tmp") == []


def test_saved_listing_is_not_read_through_a_symbolic_link(store: MailStore, tmp_path: Path) -> None:
    """A link in the saved listing's place is not followed."""
    other = saved_store(store)
    path = store.folder(USER, NEWMAIL) / LISTING_FILE
    elsewhere = tmp_path / "elsewhere"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    assert len(other.scan(USER, NEWMAIL)) == 2  # listed again, not loaded through the link
    assert not path.is_symlink()  # and the new listing replaced the link, not its target
    assert elsewhere.read_bytes().startswith(b"vmspop folder listing")


# -- large folders are listed in a helper process ----------------------------------------------


@pytest.fixture
def helper_for_every_folder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Send every build to vmspop.relist (running this checkout), and count the helpers."""
    import vmspop.relist
    import vmspop.store
    monkeypatch.setattr(vmspop.store, "OUT_OF_PROCESS_DIRECTORY_BYTES", 0)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    runs: list[int] = []
    real = vmspop.relist.build_elsewhere

    def counting(*args: object) -> bool:
        runs.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(vmspop.relist, "build_elsewhere", counting)
    return runs


def test_large_folder_is_listed_by_a_helper_process(store: MailStore, helper_for_every_folder: list[int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper lists the folder (measuring and renaming a foreign file, reporting what it
    skipped), the server loads its result, and keeps and saves it once settled."""
    store.deliver([USER], [b"one\n"], arrival=1_600_000_000)
    new = store.folder(USER, NEWMAIL) / "new"
    (new / "1600000001.V1I1M1.mx").write_bytes(b"foreign\n")
    (new / "1700000000.M1P1.stray").mkdir()
    settle(store)

    def no_thread_build(*args: object) -> None:
        raise AssertionError("listed in the server process")  # pragma: no cover

    monkeypatch.setattr(vmspop.store, "build_listing", no_thread_build)
    problems: list[str] = []
    listing = store.scan(USER, NEWMAIL, problems=problems)
    assert helper_for_every_folder == [1]
    assert [m.wire for m in listing] == [5, 9]
    assert Path(listing[1].path).name == "1600000001.V1I1M1.mx,S=8,W=9"  # renamed by the helper
    assert len(problems) == 1 and "not a regular file" in problems[0]
    assert (store.folder(USER, NEWMAIL) / LISTING_FILE).exists()
    assert os.listdir(store.folder(USER, NEWMAIL) / "tmp") == []


def test_helper_listing_of_a_changing_folder_serves_the_session_only(
        store: MailStore, helper_for_every_folder: list[int]) -> None:
    """A folder changed in the last seconds: the helper's listing serves this login, but it
    is neither kept nor saved for others."""
    store.deliver([USER], [b"one\n"])
    assert len(store.scan(USER, NEWMAIL)) == 1
    assert not (store.folder(USER, NEWMAIL) / LISTING_FILE).exists()
    assert len(store.scan(USER, NEWMAIL)) == 1
    assert helper_for_every_folder == [1, 1]
    assert os.listdir(store.folder(USER, NEWMAIL) / "tmp") == []


def test_folder_is_listed_here_when_the_helper_fails(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the helper cannot run (or writes nothing usable), the server lists the folder itself."""
    import vmspop.relist
    monkeypatch.setattr(vmspop.store, "OUT_OF_PROCESS_DIRECTORY_BYTES", 0)
    monkeypatch.setattr(vmspop.relist.sys, "executable", "/nonexistent/python")
    store.deliver([USER], [b"one\n"])
    assert len(store.scan(USER, NEWMAIL)) == 1

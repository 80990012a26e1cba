"""Tests for vmspop.store: the Maildir mail store, its names, UIDs, locks and delivery."""

from __future__ import annotations

import base64
import calendar
import errno
import hashlib
import io
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmspop.store
from vmspop.store import (
    LOCK_FILE,
    MAIL,
    NEWMAIL,
    READ_BLOCK,
    STALE_TMP_SECONDS,
    TMP_SWEEP_INTERVAL,
    DeliveryError,
    MailboxLocked,
    MailStore,
    NoSuchMailbox,
    measure,
)
from vmspop.names import MAX_UID_LENGTH, StoredMessage, make_uid, parse_name
from vmspop.wire import wire_size

# ---------------------------------------------------------------- helpers

USER = "jones"
OTHER = "smith"
#: 06-APR-1999 06:02:31.15 UTC, the date of the VMS APOP example.
VMS_EXAMPLE = calendar.timegm((1999, 4, 6, 6, 2, 31)) + 0.15


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    """A store with mailboxes for jones and smith."""
    s = MailStore(tmp_path / "mail", hostname="test.example")
    s.create_mailbox(USER)
    s.create_mailbox(OTHER)
    return s


def names(directory: Path) -> list[str]:
    """The sorted file names in a directory."""
    return sorted(os.listdir(directory))


def maildir_files(store: MailStore, user: str) -> list[Path]:
    """Every file in every new/, cur/ and tmp/ of a user's two folders."""
    found = []
    for folder in (NEWMAIL, MAIL):
        for sub in ("new", "cur", "tmp"):
            directory = store.folder(user, folder) / sub
            if directory.is_dir():
                found.extend(directory.iterdir())
    return found


def put(store: MailStore, user: str, folder: str, sub: str, name: str, body: bytes,
        sized: bool = False) -> Path:
    """Drop a message file into a Maildir; with ``sized`` the name gets correct S/W fields."""
    if sized:
        head, sep, info = name.partition(":")
        name = f"{head},S={len(body)},W={wire_size(body)}{sep}{info}"
    path = store.folder(user, folder) / sub / name
    path.write_bytes(body)
    return path


class Counter:
    """Wraps a function, counting calls and optionally failing on one of them."""

    def __init__(self, real: Callable[..., Any], fail_on: int = 0, error: BaseException | None = None) -> None:
        self.real = real
        self.calls = 0
        self.fail_on = fail_on
        self.error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_on and self.error is not None:
            raise self.error
        return self.real(*args, **kwargs)


# ---------------------------------------------------------------- paths and mailboxes


def test_create_mailbox_makes_both_maildirs_private(tmp_path: Path) -> None:
    """create_mailbox makes the user dir, NEWMAIL and MAIL and their cur/new/tmp, all mode 0700."""
    old = os.umask(0o022)
    try:
        s = MailStore(tmp_path / "root", hostname="h")
        s.create_mailbox(USER)
    finally:
        os.umask(old)
    top = tmp_path / "root" / USER
    assert stat.S_IMODE(top.stat().st_mode) == 0o700
    for folder in (NEWMAIL, MAIL):
        assert stat.S_IMODE((top / folder).stat().st_mode) == 0o700, folder
        for sub in ("cur", "new", "tmp"):
            d = top / folder / sub
            assert d.is_dir()
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert s.has_mailbox(USER)


def test_create_mailbox_is_idempotent(store: MailStore) -> None:
    """A second create_mailbox succeeds and keeps the mail already there."""
    path = put(store, USER, NEWMAIL, "new", "1700000000.M1P1.h", b"x\n", sized=True)
    store.create_mailbox(USER)
    assert path.read_bytes() == b"x\n"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/abs", "nul\0byte"])
def test_user_dir_rejects_unsafe_names(store: MailStore, bad: str) -> None:
    """user_dir refuses names that are empty, dot-names, contain a slash or a NUL."""
    with pytest.raises(ValueError):
        store.user_dir(bad)


def test_user_dir_and_secret_path_layout(store: MailStore) -> None:
    """The user directory is MAILROOT/<user> and the secret is POP_SECRET.DAT inside it."""
    assert store.user_dir(USER) == store.root / USER
    assert store.folder(USER, MAIL) == store.root / USER / "MAIL"
    assert store.secret_path(USER) == store.root / USER / "POP_SECRET.DAT"


def test_paths_are_kept_and_bounded(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's paths are built once; the kept ones are dropped when there are too many,
    and an unsafe name is refused however many were kept before."""
    import vmspop.store as store_module

    monkeypatch.setattr(store_module, "PATHS_KEPT", 3)
    assert store.user_dir(USER) is store.user_dir(USER)
    assert store.folder(USER, MAIL) is store.folder(USER, MAIL)
    for name in ("a", "b", "c", "d"):
        assert store.user_dir(name) == store.root / name
    assert len(store._paths) <= 3
    assert store.folder(USER, NEWMAIL) == store.root / USER / "NEWMAIL"
    with pytest.raises(ValueError):
        store.folder("..", MAIL)


def test_has_mailbox_false_for_missing_file_or_symlink(store: MailStore, tmp_path: Path) -> None:
    """has_mailbox is False for a missing user, a plain file or a symlink to a real mailbox."""
    assert not store.has_mailbox("nobody")
    (store.root / "plainfile").write_text("x")
    assert not store.has_mailbox("plainfile")
    os.symlink(store.user_dir(USER), store.root / "alias")
    assert not store.has_mailbox("alias")


# ---------------------------------------------------------------- delivery


def only_file(directory: Path) -> Path:
    """The single file in a directory."""
    entries = list(directory.iterdir())
    assert len(entries) == 1, entries
    return entries[0]


def test_deliver_writes_into_newmail_new_with_sizes(store: MailStore) -> None:
    """deliver puts one file in NEWMAIL/new named ,S=<stored>,W=<wire> that match its content."""
    body = b"Subject: hi\n\nline one\nline two\n"
    [path] = store.deliver([USER], [body])
    assert path.parent == store.folder(USER, NEWMAIL) / "new"
    assert only_file(path.parent) == path
    assert path.read_bytes() == body
    parsed = parse_name(path.name)
    assert parsed is not None
    base, fields, info = parsed
    assert info is None
    assert fields == {"S": str(len(body)), "W": str(len(body) + body.count(b"\n"))}
    assert base.endswith(".test.example")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert names(store.folder(USER, NEWMAIL) / "tmp") == []


def test_deliver_stores_crlf_as_lf(store: MailStore) -> None:
    """CRLF input is stored with LF line ends; S counts the LF form and W the CRLF form."""
    [path] = store.deliver([USER], [b"A: b\r\n\r\nbody\r\n"])
    assert path.read_bytes() == b"A: b\n\nbody\n"
    _, fields, _ = parse_name(path.name)  # type: ignore[misc]
    assert fields == {"S": "11", "W": "14"}


def test_deliver_joins_crlf_split_across_blocks(store: MailStore) -> None:
    """A CR ending one block and the LF starting the next are one CRLF, stored as LF."""
    blocks = [b"Subject: x\r", b"\nbody\r", b"\n", b"", b"end\r", b"\r\n"]
    [path] = store.deliver([USER], blocks)
    assert path.read_bytes() == b"Subject: x\nbody\nend\r\n"
    _, fields, _ = parse_name(path.name)  # type: ignore[misc]
    stored = path.read_bytes()
    assert fields == {"S": str(len(stored)), "W": str(wire_size(stored))}


def test_deliver_keeps_lone_cr_at_end(store: MailStore) -> None:
    """A CR that is the very last octet (no LF follows) is kept, not lost."""
    [path] = store.deliver([USER], [b"abc\r"])
    assert path.read_bytes() == b"abc\r"
    assert parse_name(path.name)[1] == {"S": "4", "W": "4"}  # type: ignore[index]


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.sampled_from([b"a", b"\r", b"\n", b"."]), max_size=60).map(b"".join),
       cuts=st.lists(st.integers(0, 60), max_size=6))
def test_deliver_result_independent_of_block_split(data: bytes, cuts: list[int]) -> None:
    """However the message is split into blocks, the stored file and its S/W are the same."""
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    blocks = [data[a:b] for a, b in zip(points, points[1:])]
    with tempfile.TemporaryDirectory() as root:
        s = MailStore(root, hostname="h")
        s.create_mailbox(USER)
        [whole] = s.deliver([USER], [data])
        [split] = s.deliver([USER], blocks)
        assert split.read_bytes() == whole.read_bytes()
        stored = whole.read_bytes()
        assert stored == data.replace(b"\r\n", b"\n")
        assert parse_name(split.name)[1] == parse_name(whole.name)[1] == {  # type: ignore[index]
            "S": str(len(stored)), "W": str(wire_size(stored))}


def test_deliver_to_several_users_gives_identical_files(store: MailStore) -> None:
    """Every recipient gets the same content under the same file name (same base)."""
    body = b"To: a, b\n\nhello\n"
    paths = store.deliver([USER, OTHER], io.BytesIO(body))
    assert len(paths) == 2
    assert paths[0].name == paths[1].name
    assert paths[0].parent == store.folder(USER, NEWMAIL) / "new"
    assert paths[1].parent == store.folder(OTHER, NEWMAIL) / "new"
    assert paths[0].read_bytes() == paths[1].read_bytes() == body


def test_deliver_unknown_recipient_writes_nothing(store: MailStore) -> None:
    """A recipient without a mailbox raises NoSuchMailbox before anything is written."""
    with pytest.raises(NoSuchMailbox):
        store.deliver([USER, "nobody", OTHER], [b"x\n"])
    assert maildir_files(store, USER) == []
    assert maildir_files(store, OTHER) == []
    assert not (store.root / "nobody").exists()


def test_deliver_same_user_twice_gets_one_copy(store: MailStore) -> None:
    """A recipient listed twice receives the message once."""
    paths = store.deliver([USER, USER], [b"x\n"])
    assert len(paths) == 1
    assert len(names(store.folder(USER, NEWMAIL) / "new")) == 1


def test_deliver_from_file_object(store: MailStore) -> None:
    """A binary file object is read to its end, across several READ_BLOCK reads."""
    body = b"line\r\n" * (READ_BLOCK // 3)  # > one read block, CRLF split at block edges
    [path] = store.deliver([USER], io.BytesIO(body))
    stored = body.replace(b"\r\n", b"\n")
    assert path.read_bytes() == stored
    assert parse_name(path.name)[1] == {"S": str(len(stored)), "W": str(len(body))}  # type: ignore[index]


def test_deliver_empty_message(store: MailStore) -> None:
    """An empty message is delivered as an empty file with S=0, W=0."""
    [path] = store.deliver([USER], io.BytesIO(b""))
    assert path.read_bytes() == b""
    assert parse_name(path.name)[1] == {"S": "0", "W": "0"}  # type: ignore[index]
    [message] = store.scan(USER, NEWMAIL)
    assert (message.physical, message.wire) == (0, 0)


def test_deliver_gives_distinct_names_each_time(store: MailStore) -> None:
    """Two deliveries in quick succession get different bases, hence different UIDs."""
    first = store.deliver([USER], [b"1\n"])[0]
    second = store.deliver([USER], [b"2\n"])[0]
    assert first.name != second.name
    uids = {m.uid for m in store.scan(USER, NEWMAIL)}
    assert len(uids) == 2


def assert_nothing_delivered(store: MailStore) -> None:
    """No file in any new/, cur/ or tmp/ of either test user."""
    assert maildir_files(store, USER) == []
    assert maildir_files(store, OTHER) == []


def test_deliver_disk_full_on_second_recipient_is_temporary(
        store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC writing the second copy gives a temporary DeliveryError and leaves no file anywhere."""
    spy = Counter(vmspop.store._write_all, fail_on=2, error=OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(vmspop.store, "_write_all", spy)
    with pytest.raises(DeliveryError) as info:
        store.deliver([USER, OTHER], [b"hello\n"])
    assert info.value.temporary is True
    assert "No space left" in str(info.value)
    assert spy.calls == 2
    assert_nothing_delivered(store)


def test_deliver_fsync_failure_is_temporary(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An EIO from fsync of the second copy aborts the whole delivery, temporarily."""
    monkeypatch.setattr(os, "fsync", Counter(os.fsync, fail_on=2, error=OSError(errno.EIO, "I/O error")))
    with pytest.raises(DeliveryError) as info:
        store.deliver([USER, OTHER], [b"hello\n"])
    assert info.value.temporary is True
    assert_nothing_delivered(store)


def test_deliver_rename_failure_removes_copies_already_delivered(
        store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the second rename fails, the first recipient's already-renamed copy is removed too."""
    monkeypatch.setattr(os, "rename", Counter(os.rename, fail_on=2, error=OSError(errno.EIO, "I/O error")))
    with pytest.raises(DeliveryError):
        store.deliver([USER, OTHER], [b"hello\n"])
    assert_nothing_delivered(store)


def test_deliver_permission_error_is_permanent(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES while writing gives DeliveryError(temporary=False) and leaves nothing."""
    spy = Counter(vmspop.store._write_all, fail_on=1, error=OSError(errno.EACCES, "Permission denied"))
    monkeypatch.setattr(vmspop.store, "_write_all", spy)
    with pytest.raises(DeliveryError) as info:
        store.deliver([USER, OTHER], [b"hello\n"])
    assert info.value.temporary is False
    assert_nothing_delivered(store)


def test_deliver_source_failure_leaves_no_tmp_file(store: MailStore) -> None:
    """An exception raised by the message source mid-way propagates and leaves nothing in tmp/."""
    def blocks() -> Iterator[bytes]:
        yield b"first part\n"
        raise ConnectionError("client went away")  # an OSError subclass

    with pytest.raises(DeliveryError):
        store.deliver([USER, OTHER], blocks())
    assert_nothing_delivered(store)

    def broken() -> Iterator[bytes]:
        yield b"first part\n"
        raise ValueError("not an OSError")

    with pytest.raises(ValueError):
        store.deliver([USER, OTHER], broken())
    assert_nothing_delivered(store)


# ---------------------------------------------------------------- scan


def test_scan_orders_by_arrival_then_base(store: MailStore) -> None:
    """scan sorts new/ and cur/ together by arrival (seconds + M<usec>), then by base."""
    put(store, USER, NEWMAIL, "new", "1700000002.M000001P1.h", b"e\n", sized=True)
    put(store, USER, NEWMAIL, "cur", "1700000000.M500000P1.h:2,S", b"d\n", sized=True)
    put(store, USER, NEWMAIL, "new", "1700000000.M400000P2.b", b"c\n", sized=True)
    put(store, USER, NEWMAIL, "cur", "1700000000.M400000P1.a:2,", b"b\n", sized=True)
    put(store, USER, NEWMAIL, "new", "1699999999.M999999P1.h", b"a\n", sized=True)
    messages = store.scan(USER, NEWMAIL)
    assert [m.base for m in messages] == [
        "1699999999.M999999P1.h",
        "1700000000.M400000P1.a",
        "1700000000.M400000P2.b",
        "1700000000.M500000P1.h",
        "1700000002.M000001P1.h",
    ]
    assert [m.arrival for m in messages] == pytest.approx(
        [1699999999.999999, 1700000000.4, 1700000000.4, 1700000000.5, 1700000002.000001])


def test_scan_reads_unpadded_microseconds_as_microseconds(store: MailStore) -> None:
    """Maildir's M<n> is a plain microsecond count: M5 (5 us) arrived before M40 (40 us)."""
    put(store, USER, NEWMAIL, "new", "1700000000.V801I2M40.mx", b"later\n", sized=True)
    put(store, USER, NEWMAIL, "new", "1700000000.V801I1M5.mx", b"earlier\n", sized=True)
    messages = store.scan(USER, NEWMAIL)
    assert [m.base for m in messages] == ["1700000000.V801I1M5.mx", "1700000000.V801I2M40.mx"]
    assert messages[0].arrival == pytest.approx(1700000000.000005)
    assert messages[1].arrival == pytest.approx(1700000000.00004)


def test_scan_ignores_dot_files(store: MailStore) -> None:
    """Files whose names start with "." are not messages."""
    put(store, USER, NEWMAIL, "new", ".hidden", b"x\n")
    put(store, USER, NEWMAIL, "cur", ".1700000000.M1P1.h,S=2,W=3", b"x\n")
    put(store, USER, NEWMAIL, "new", "1700000000.M1P1.h", b"x\n", sized=True)
    assert [m.base for m in store.scan(USER, NEWMAIL)] == ["1700000000.M1P1.h"]
    assert names(store.folder(USER, NEWMAIL) / "new") == [".hidden", "1700000000.M1P1.h,S=2,W=3"]


def test_scan_ignores_tmp(store: MailStore) -> None:
    """A file still in tmp/ is not part of the folder."""
    put(store, USER, NEWMAIL, "tmp", "1700000000.M1P1.h", b"x\n")
    assert store.scan(USER, NEWMAIL) == []


def test_scan_limit_keeps_the_oldest(store: MailStore) -> None:
    """limit=N keeps the N oldest messages; 0 keeps all."""
    for i in (5, 1, 4, 2, 3):
        put(store, USER, NEWMAIL, "new", f"170000000{i}.M0P1.h", b"x\n", sized=True)
    assert [m.base[9] for m in store.scan(USER, NEWMAIL, limit=2)] == ["1", "2"]
    assert len(store.scan(USER, NEWMAIL, limit=0)) == 5
    assert len(store.scan(USER, NEWMAIL, limit=10)) == 5


def test_scan_of_missing_folder_is_empty(tmp_path: Path) -> None:
    """A folder whose new/ and cur/ do not exist is just empty."""
    s = MailStore(tmp_path, hostname="h")
    (tmp_path / USER).mkdir()
    assert s.scan(USER, NEWMAIL) == []


def test_scan_describes_a_delivered_message(store: MailStore) -> None:
    """A scanned message carries its path, base, arrival, sizes and UID."""
    body = b"a\nb\n"
    [path] = store.deliver([USER], [body])
    [m] = store.scan(USER, NEWMAIL)
    assert isinstance(m, StoredMessage)
    assert m.path == str(path)
    assert path.name.startswith(m.base + ",S=")
    assert (m.physical, m.wire) == (4, 6)
    assert abs(m.arrival - path.stat().st_mtime) < 5
    assert m.uid == make_uid(USER, m.arrival, m.base)


def test_scan_measures_postfix_name_once_and_renames(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Postfix-named file is measured once, renamed to carry S/W, and keeps its UID."""
    body = b"Subject: p\n\nbody\n"
    put(store, USER, NEWMAIL, "new", "1700000000.V801I42M123456.mx", body)
    put(store, USER, NEWMAIL, "cur", "1700000001.V801I43M7.mx:2,S", body)
    spy = Counter(vmspop.store.measure)
    monkeypatch.setattr(vmspop.store, "measure", spy)

    first = store.scan(USER, NEWMAIL)
    assert spy.calls == 2
    size = f",S={len(body)},W={wire_size(body)}"
    assert names(store.folder(USER, NEWMAIL) / "new") == ["1700000000.V801I42M123456.mx" + size]
    assert names(store.folder(USER, NEWMAIL) / "cur") == ["1700000001.V801I43M7.mx" + size + ":2,S"]
    assert [m.base for m in first] == ["1700000000.V801I42M123456.mx", "1700000001.V801I43M7.mx"]
    assert first[0].arrival == pytest.approx(1700000000.123456)
    assert all((m.physical, m.wire) == (len(body), wire_size(body)) for m in first)
    assert all(Path(m.path).exists() for m in first)

    second = store.scan(USER, NEWMAIL)
    assert spy.calls == 2, "the second scan must not read any body"
    assert second == first


def test_scan_gives_timestampless_name_an_mtime_prefix(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with no leading timestamp gets an mtime-based one once; its UID is then stable."""
    path = put(store, USER, NEWMAIL, "new", "msg-one", b"hello\n")
    os.utime(path, ns=(1_600_000_000_250_000_000, 1_600_000_000_250_000_000))
    spy = Counter(vmspop.store.measure)
    monkeypatch.setattr(vmspop.store, "measure", spy)

    [first] = store.scan(USER, NEWMAIL)
    assert spy.calls == 1
    assert first.base == "1600000000.M250000.msg-one"
    assert first.arrival == pytest.approx(1600000000.25)
    assert names(store.folder(USER, NEWMAIL) / "new") == ["1600000000.M250000.msg-one,S=6,W=7"]
    assert first.uid.startswith("JONES_13_SEP_2020_12_26_40_25_")

    os.utime(first.path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))  # mtime no longer matters
    [second] = store.scan(USER, NEWMAIL)
    assert spy.calls == 1
    assert second.uid == first.uid
    assert second == first


def test_scan_trusts_dovecot_sizes_without_reading(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Dovecot name with S= and W= is believed without opening the file, and is not renamed."""
    name = "1700000000.M1P2.host,S=10,W=12:2,S"
    put(store, USER, NEWMAIL, "cur", name, b"whatever the content is\n")
    spy = Counter(vmspop.store.measure)
    monkeypatch.setattr(vmspop.store, "measure", spy)
    [m] = store.scan(USER, NEWMAIL)
    assert spy.calls == 0
    assert (m.base, m.physical, m.wire) == ("1700000000.M1P2.host", 10, 12)
    assert m.arrival == pytest.approx(1700000000.000001)
    assert names(store.folder(USER, NEWMAIL) / "cur") == [name]


def test_scan_remeasures_when_a_size_field_is_missing(store: MailStore) -> None:
    """A name with S= but no W= is measured and renamed with both."""
    put(store, USER, NEWMAIL, "new", "1700000000.M1P2.host,S=3", b"ab\n")
    [m] = store.scan(USER, NEWMAIL)
    assert (m.physical, m.wire) == (3, 4)
    assert Path(m.path).name == "1700000000.M1P2.host,S=3,W=4"


def test_scan_skips_file_vanishing_before_measure(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A foreign file deleted between the listing and its measurement is left out, not an error."""
    doomed = put(store, USER, NEWMAIL, "new", "1700000000.V1I1M1.mx", b"gone\n")
    put(store, USER, NEWMAIL, "new", "1700000001.M1P1.h", b"stays\n", sized=True)
    real = vmspop.store.measure

    def vanish_then_measure(path: str | os.PathLike[str]) -> tuple[int, int]:
        os.unlink(doomed)
        return real(path)

    monkeypatch.setattr(vmspop.store, "measure", vanish_then_measure)
    assert [m.base for m in store.scan(USER, NEWMAIL)] == ["1700000001.M1P1.h"]


def test_scan_of_mail_folder(store: MailStore) -> None:
    """scan reads the MAIL folder the same way."""
    put(store, USER, MAIL, "cur", "1700000000.M1P1.h:2,S", b"x\n", sized=True)
    [m] = store.scan(USER, MAIL)
    assert Path(m.path).parent == store.folder(USER, MAIL) / "cur"


# ---------------------------------------------------------------- UIDs


def test_make_uid_is_user_name_plus_date_of_arrival() -> None:
    """The UID is USER_DD_MON_YYYY_HH_MM_SS_CC_ plus an 8-character tag, in UTC."""
    uid = make_uid("jones", VMS_EXAMPLE, "923378551.M150000P1.h")
    assert uid.startswith("JONES_06_APR_1999_06_02_31_15_")
    tag = uid[len("JONES_06_APR_1999_06_02_31_15_"):]
    assert re.fullmatch(r"[A-Z2-7]{8}", tag)


def test_make_uid_rounds_hundredths_with_carry() -> None:
    """Hundredths are rounded; .995 and up carry into the next second instead of wrapping to _00."""
    second = VMS_EXAMPLE - 0.15  # 06:02:31.00 exactly
    assert make_uid("jones", second, "b").startswith("JONES_06_APR_1999_06_02_31_00_")
    assert make_uid("jones", second + 0.07, "b").startswith("JONES_06_APR_1999_06_02_31_07_")
    assert make_uid("jones", second + 0.156, "b").startswith("JONES_06_APR_1999_06_02_31_16_")
    assert make_uid("jones", second + 0.994, "b").startswith("JONES_06_APR_1999_06_02_31_99_")
    assert make_uid("jones", second + 0.999, "b").startswith("JONES_06_APR_1999_06_02_32_00_")
    # the carry runs through minutes, hours, days, months and years
    assert make_uid("jones", calendar.timegm((1999, 12, 31, 23, 59, 59)) + 0.999, "b").startswith(
        "JONES_01_JAN_2000_00_00_00_00_")


@pytest.mark.parametrize("base", ["a", "1700000000.M1P2.host", "msg-\udcff-surrogate", "é" * 50])
def test_make_uid_is_rfc1939_safe(base: str) -> None:
    """A UID is 1-70 characters, all printable ASCII 0x21-0x7E."""
    uid = make_uid("jones", 1700000000.5, base)
    assert 1 <= len(uid) <= MAX_UID_LENGTH
    assert all(0x21 <= ord(c) <= 0x7E for c in uid)


def test_make_uid_stable_and_unique_per_base() -> None:
    """The same base always gives the same UID; other bases with the same arrival differ."""
    a = make_uid("jones", 1700000000.5, "1700000000.M500000P1.h")
    assert a == make_uid("jones", 1700000000.5, "1700000000.M500000P1.h")
    others = {make_uid("jones", 1700000000.5, f"1700000000.M500000P{i}.h") for i in range(200)}
    assert len(others) == 200


def test_make_uid_with_longest_user_name_fits() -> None:
    """A 32-character user name (the longest allowed) still gives a UID of at most 70 characters."""
    uid = make_uid("u" * 32, 4102444799.99, "b")  # 31-DEC-2099 23:59:59.99
    assert uid.startswith("U" * 32 + "_31_DEC_2099_23_59_59_99_")
    assert len(uid) <= MAX_UID_LENGTH


# ---------------------------------------------------------------- the QUIT update


def test_move_to_mail_keeps_base_and_uid(store: MailStore) -> None:
    """move_to_mail lands the file in MAIL/cur with :2,S under the same base, so the UID is unchanged."""
    [path] = store.deliver([USER], [b"hello\n"])
    [before] = store.scan(USER, NEWMAIL)
    assert store.move_to_mail(USER, before) is True
    assert not path.exists()
    assert store.scan(USER, NEWMAIL) == []
    [after] = store.scan(USER, MAIL)
    assert Path(after.path) == store.folder(USER, MAIL) / "cur" / (path.name + ":2,S")
    assert (after.base, after.uid, after.arrival) == (before.base, before.uid, before.arrival)
    assert (after.physical, after.wire) == (before.physical, before.wire)


@pytest.mark.parametrize(("info", "expected"), [
    (":2,F", ":2,FS"),
    (":2,RT", ":2,RST"),
    (":2,S", ":2,S"),
    (":2,", ":2,S"),
    ("", ":2,S"),
])
def test_move_to_mail_merges_flags(store: MailStore, info: str, expected: str) -> None:
    """Existing Maildir flags are kept and S (seen) is added, in sorted order."""
    put(store, USER, NEWMAIL, "cur", "1700000000.M1P1.h" + info, b"x\n", sized=True)
    [m] = store.scan(USER, NEWMAIL)
    assert store.move_to_mail(USER, m)
    assert names(store.folder(USER, MAIL) / "cur") == ["1700000000.M1P1.h,S=2,W=3" + expected]


def test_move_to_mail_false_when_source_gone(store: MailStore) -> None:
    """move_to_mail returns False (and moves nothing) when the file has disappeared."""
    store.deliver([USER], [b"x\n"])
    [m] = store.scan(USER, NEWMAIL)
    os.unlink(m.path)
    assert store.move_to_mail(USER, m) is False
    assert names(store.folder(USER, MAIL) / "cur") == []


def test_remove_true_then_false(store: MailStore) -> None:
    """remove deletes the file and returns True; a second remove returns False."""
    store.deliver([USER], [b"x\n"])
    [m] = store.scan(USER, NEWMAIL)
    assert store.remove(m) is True
    assert not Path(m.path).exists()
    assert store.remove(m) is False


def test_move_new_to_mail_moves_new_and_cur_keeping_names(store: MailStore) -> None:
    """move_new_to_mail moves NEWMAIL/new and NEWMAIL/cur into MAIL/new and MAIL/cur, names kept."""
    a = put(store, USER, NEWMAIL, "new", "1700000000.M1P1.h", b"a\n", sized=True)
    b = put(store, USER, NEWMAIL, "cur", "1700000001.M1P1.h:2,F", b"b\n", sized=True)
    put(store, USER, NEWMAIL, "new", ".dotfile", b"ignored\n")
    before = store.scan(USER, NEWMAIL)
    assert store.move_new_to_mail(USER) == 2
    assert names(store.folder(USER, MAIL) / "new") == [a.name]
    assert names(store.folder(USER, MAIL) / "cur") == [b.name]
    assert names(store.folder(USER, NEWMAIL) / "new") == [".dotfile"]
    after = store.scan(USER, MAIL)
    assert [m.uid for m in after] == [m.uid for m in before]
    assert store.move_new_to_mail(USER) == 0


def test_sync_folders_runs(store: MailStore) -> None:
    """sync_folders fsyncs existing folder directories without error."""
    store.sync_folders(USER)


# ---------------------------------------------------------------- locks


def test_lock_is_exclusive_within_process(store: MailStore) -> None:
    """A second lock of the same user fails with MailboxLocked until the first is released."""
    first = store.lock(USER)
    assert first.held
    with pytest.raises(MailboxLocked):
        store.lock(USER)
    other = store.lock(OTHER)  # other users are independent
    first.release()
    assert not first.held
    again = store.lock(USER)
    assert again.held
    again.release()
    other.release()


def test_lock_is_exclusive_across_store_instances(store: MailStore) -> None:
    """Two MailStore objects over the same root exclude each other (flock per open file)."""
    twin = MailStore(store.root, hostname="h")
    held = store.lock(USER)
    with pytest.raises(MailboxLocked):
        twin.lock(USER)
    held.release()
    twin.lock(USER).release()


def test_lock_release_twice_is_harmless(store: MailStore) -> None:
    """Calling release a second time does nothing and does not free someone else's lock."""
    first = store.lock(USER)
    first.release()
    second = store.lock(USER)
    first.release()
    with pytest.raises(MailboxLocked):
        store.lock(USER)
    second.release()


def test_lock_without_mailbox(store: MailStore) -> None:
    """Locking a user who has no mail directory raises NoSuchMailbox."""
    with pytest.raises(NoSuchMailbox):
        store.lock("nobody")


def test_lock_file_persists_and_is_private(store: MailStore) -> None:
    """The lock file is created mode 0600 and never removed."""
    store.lock(USER).release()
    lock_file = store.user_dir(USER) / LOCK_FILE
    assert lock_file.exists()
    assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600


def test_lock_held_by_another_process_then_freed_by_its_death(store: MailStore) -> None:
    """A lock held by another process gives MailboxLocked; SIGKILLing it frees the lock at once."""
    lock_file = store.user_dir(USER) / LOCK_FILE
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"locked"
        with pytest.raises(MailboxLocked):
            store.lock(USER)
        # the failed attempt must not leave the in-process bookkeeping set
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        lock = store.lock(USER)
        assert lock.held
        lock.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_lock_not_inherited_by_child_processes(store: MailStore) -> None:
    """The lock descriptor is close-on-exec: a spawned program does not keep the lock alive."""
    lock = store.lock(USER)
    child = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                             close_fds=False, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"up"  # exec (and its CLOEXEC closing) is complete
        lock.release()
        store.lock(USER).release()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


# ---------------------------------------------------------------- stale tmp files


def test_stale_tmp_files_only_older_than_36_hours(store: MailStore) -> None:
    """Only tmp/ files untouched for more than 36 hours, in either folder, are reported."""
    now = 1_700_000_000.0
    old_new = put(store, USER, NEWMAIL, "tmp", "old", b"x")
    old_mail = put(store, USER, MAIL, "tmp", "old-too", b"x")
    young = put(store, USER, NEWMAIL, "tmp", "young", b"x")
    fresh = put(store, USER, MAIL, "tmp", "fresh", b"x")
    delivered = put(store, USER, NEWMAIL, "new", "1.M1P1.h", b"x", sized=True)
    for path, age in ((old_new, 37 * 3600), (old_mail, STALE_TMP_SECONDS + 1), (young, 35 * 3600),
                      (fresh, 0), (delivered, 100 * 3600)):
        os.utime(path, (now - age, now - age))
    assert sorted(store.stale_tmp_files(USER, now=now)) == sorted([old_new, old_mail])


def test_sweep_tmp_at_most_once_an_interval(store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login sweeps tmp/ at most every TMP_SWEEP_INTERVAL a user; a failed sweep is retried."""
    clock = [1000.0]
    monkeypatch.setattr("vmspop.store.time.monotonic", lambda: clock[0])
    old = time.time() - STALE_TMP_SECONDS - 60

    def abandoned(name: str) -> Path:
        path = put(store, USER, NEWMAIL, "tmp", name, b"x")
        os.utime(path, (old, old))
        return path

    first = abandoned("first")
    assert store.sweep_tmp(USER) == 1 and not first.exists()
    second = abandoned("second")
    clock[0] += TMP_SWEEP_INTERVAL - 1
    assert store.sweep_tmp(USER) == 0 and second.exists()
    store.create_mailbox("other")
    assert store.sweep_tmp("other") == 0  # each user has their own interval
    clock[0] += 1
    assert store.sweep_tmp(USER) == 1 and not second.exists()

    clock[0] += TMP_SWEEP_INTERVAL
    third = abandoned("third")
    monkeypatch.setattr(MailStore, "remove_stale_tmp_files", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        store.sweep_tmp(USER)
    monkeypatch.undo()
    monkeypatch.setattr("vmspop.store.time.monotonic", lambda: clock[0])
    assert store.sweep_tmp(USER) == 1 and not third.exists()


def test_stale_tmp_files_default_now(store: MailStore) -> None:
    """Without ``now`` the current time is used; a fresh file is not stale."""
    put(store, USER, NEWMAIL, "tmp", "fresh", b"x")
    assert list(store.stale_tmp_files(USER)) == []


# ---------------------------------------------------------------- measure and parse_name


@pytest.mark.parametrize(("body", "expected"), [
    (b"", (0, 0)),
    (b"a", (1, 1)),
    (b"a\nb\n", (4, 6)),
    (b"a\r\nb\r\n", (6, 6)),
    (b"a\rb\n", (4, 5)),
    (b"\n\n", (2, 4)),
])
def test_measure(tmp_path: Path, body: bytes, expected: tuple[int, int]) -> None:
    """measure returns (stored octets, CRLF wire octets)."""
    path = tmp_path / "m"
    path.write_bytes(body)
    assert measure(path) == expected


def test_measure_crlf_across_read_blocks(tmp_path: Path) -> None:
    """A CRLF split by the READ_BLOCK boundary is counted once."""
    body = b"x" * (READ_BLOCK - 1) + b"\r\n" + b"y\n"
    path = tmp_path / "m"
    path.write_bytes(body)
    assert measure(path) == (len(body), len(body) + 1)


def test_measure_missing_file(tmp_path: Path) -> None:
    """measure of a missing file raises FileNotFoundError (scan relies on it)."""
    with pytest.raises(FileNotFoundError):
        measure(tmp_path / "nope")


@pytest.mark.parametrize(("name", "expected"), [
    ("1700000000.M1P2.host,S=10,W=12:2,S", ("1700000000.M1P2.host", {"S": "10", "W": "12"}, "2,S")),
    ("1700000000.M1P2.host,S=10,W=12", ("1700000000.M1P2.host", {"S": "10", "W": "12"}, None)),
    ("1700000000.V801I42M123456.mx", ("1700000000.V801I42M123456.mx", {}, None)),
    ("msg-one:2,", ("msg-one", {}, "2,")),
    ("a,b", ("a,b", {}, None)),
    ("host\\054x,S=1", ("host\\054x", {"S": "1"}, None)),
])
def test_parse_name(name: str, expected: tuple[str, dict[str, str], str | None]) -> None:
    """parse_name splits base, ,X= fields and :info."""
    assert parse_name(name) == expected


@pytest.mark.parametrize("name", [":2,S", "", "a/b"])
def test_parse_name_foreign(name: str) -> None:
    """Names with no base, or with a slash, are not Maildir names."""
    assert parse_name(name) is None


def _reference_uid(user: str, arrival: float, base: str) -> str:
    """The UIDL format written the plain way (UIDLs must not change across upgrades)."""
    seconds = int(arrival)
    hundredths = int(round((arrival - seconds) * 100))
    if hundredths == 100:
        seconds, hundredths = seconds + 1, 0
    t = time.gmtime(seconds)
    month = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")[t.tm_mon - 1]
    tag = base64.b32encode(hashlib.sha256(base.encode("utf-8", "surrogateescape")).digest()[:5]).decode()
    return (f"{user.upper()}_{t.tm_mday:02d}_{month}_{t.tm_year:04d}_{t.tm_hour:02d}_{t.tm_min:02d}_"
            f"{t.tm_sec:02d}_{hundredths:02d}_{tag}")


@settings(max_examples=500, deadline=None)
@given(arrival=st.one_of(st.floats(0, 4_102_444_799.99),
                         st.integers(0, 4_102_444_799).map(lambda s: s + 0.995),
                         st.integers(0, 4_102_444_799).map(float)),
       base=st.text(min_size=1, max_size=60).filter(lambda b: "\0" not in b))
def test_make_uid_matches_the_plain_reference(arrival: float, base: str) -> None:
    """The table-driven make_uid gives exactly the UIDL of the plain formatting."""
    assert make_uid("jones", arrival, base) == _reference_uid("jones", arrival, base)

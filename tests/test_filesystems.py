"""Current attributes: a stat on local file systems, an open where NFS's cache could answer."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vmspop import filesystems
from vmspop.filesystems import current_stat, filesystem_type

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 0:45 / /srv/mail rw,relatime shared:7 - nfs4 filer:/export/mail rw,vers=4.2
41 27 0:46 / /srv/cephmail rw,relatime - ceph 10.0.0.1:/ rw,name=vmspop
"""


def test_filesystem_type_from_mountinfo() -> None:
    """The type after the " - " separator of the mount whose device matches."""
    assert filesystem_type(MOUNTINFO, 254, 0) == "ext4"
    assert filesystem_type(MOUNTINFO, 0, 45) == "nfs4"  # optional fields before " - "
    assert filesystem_type(MOUNTINFO, 0, 46) == "ceph"
    assert filesystem_type(MOUNTINFO, 8, 1) is None
    assert filesystem_type("", 254, 0) is None


@pytest.mark.parametrize("fstype, local", [("ext4", True), ("xfs", True), ("tmpfs", True),
                                           ("nfs4", False), ("nfs", False), ("cifs", False),
                                           ("ceph", False), ("fuse.sshfs", False)])
def test_only_known_local_types_are_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fstype: str, local: bool) -> None:
    """A network or unknown file system, or a device missing from the table, is shared."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"27 1 0:99 / / rw - {fstype} src rw\n")
    monkeypatch.setattr(filesystems, "MOUNTINFO", mountinfo)
    monkeypatch.setattr(filesystems, "_local", {})
    assert filesystems.is_local(os.makedev(0, 99)) is local
    assert filesystems.is_local(os.makedev(0, 98)) is False
    monkeypatch.setattr(filesystems, "MOUNTINFO", tmp_path / "missing")
    monkeypatch.setattr(filesystems, "_local", {})
    assert filesystems.is_local(os.makedev(0, 99)) is False


def _counting_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    flags: list[int] = []
    real_open = os.open

    def counted(path, mode, *args):  # type: ignore[no-untyped-def]
        flags.append(mode)
        return real_open(path, mode, *args)

    monkeypatch.setattr("vmspop.filesystems.os.open", counted)
    return flags


@pytest.mark.parametrize("local", [True, False])
def test_current_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: bool) -> None:
    """Locally one stat; on a shared file system the file or directory is opened (with
    O_NOFOLLOW for a directory), and the attributes are the same."""
    monkeypatch.setattr(filesystems, "is_local", lambda device: local)
    opens = _counting_opens(monkeypatch)
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert current_stat(tmp_path / "link").st_ino == os.stat(tmp_path / "file").st_ino
    assert current_stat(tmp_path, directory=True).st_ino == os.stat(tmp_path).st_ino
    if local:
        assert opens == []
    else:
        assert len(opens) == 2 and opens[1] & os.O_NOFOLLOW and opens[1] & os.O_DIRECTORY


@pytest.mark.parametrize("local", [True, False])
def test_current_stat_errors_are_those_of_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               local: bool) -> None:
    """A directory that is a link is ELOOP, one that is a file ENOTDIR, a missing one ENOENT."""
    monkeypatch.setattr(filesystems, "is_local", lambda device: local)
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dirlink").symlink_to(tmp_path)
    for name, code in (("dirlink", errno.ELOOP), ("file", errno.ENOTDIR), ("missing", errno.ENOENT)):
        with pytest.raises(OSError) as raised:
            current_stat(tmp_path / name, directory=True)
        assert raised.value.errno == code
    with pytest.raises(FileNotFoundError):
        current_stat(tmp_path / "missing")


def test_this_machines_test_directory_is_classified(tmp_path: Path) -> None:
    """The real mount table answers for the directory the tests run in (whatever it is)."""
    if not filesystems.MOUNTINFO.exists():
        pytest.skip("no /proc/self/mountinfo (not Linux)")
    device = os.stat(tmp_path).st_dev
    fstype = filesystem_type(filesystems.MOUNTINFO.read_text(), os.major(device), os.minor(device))
    assert filesystems.is_local(device) is (fstype in filesystems.LOCAL_TYPES)

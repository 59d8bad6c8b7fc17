"""state.root.open_regular: the one way a reader opens a file that must be a regular one, without ever blocking.

A FIFO where a file belongs would hang the open until a writer came (the cron health check, for good), a device
would read forever, a folder cannot be read: each is refused on the open descriptor, by what it is, and the
descriptor is closed. The callers turn the refusal into their own message; these tests pin the primitive."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from selfheal.state.root import NotRegularFile, open_regular


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_regular_file_is_handed_back_with_its_status(tmp_path: Path) -> None:
    """The fd reads the file, and the status handed back is that fd's (size, mode)."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello")
    fd, info = open_regular(path)
    try:
        assert os.read(fd, 100) == b"hello"
        assert stat.S_ISREG(info.st_mode) and info.st_size == 5
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc")
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_fifo, "a FIFO (named pipe)"),
        (_folder, "a folder"),
        (_socket, "a socket"),
        (_device, "a device"),
    ],
)
def test_what_is_no_regular_file_is_refused_by_name_without_blocking_or_leaking(
    tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    """A FIFO with no writer, a folder, a socket, /dev/zero behind a link: NotRegularFile saying what it is (an
    OSError, so a caller's `except OSError` still holds), and no descriptor left open."""
    path = tmp_path / "planted"
    make(path)
    before = open_fds()
    if kind == "a socket":  # a socket file cannot be opened at all: the open's own error comes through
        with pytest.raises(OSError) as refused:
            open_regular(path)
        assert refused.value.errno == errno.ENXIO
    else:
        with pytest.raises(NotRegularFile) as refused:
            open_regular(path)
        assert refused.value.kind == kind
        assert str(refused.value) == f"{path} is {kind}, not a regular file"
        assert isinstance(refused.value, OSError)
    assert open_fds() == before


def test_a_folder_is_handed_back_only_when_asked_for(tmp_path: Path) -> None:
    """`folders=True` (the state files' reader, which names a folder itself): a folder is opened, not refused."""
    fd, info = open_regular(tmp_path, folders=True)
    os.close(fd)
    assert stat.S_ISDIR(info.st_mode)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotRegularFile):
        open_regular(tmp_path / "pipe", folders=True)


def test_a_link_is_followed_unless_told_not_to(tmp_path: Path) -> None:
    """The user's own files may be links (followed); a state file never is (`follow=False`: ELOOP, as os.open
    says it, for the caller to name)."""
    target = tmp_path / "real.txt"
    target.write_bytes(b"real")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    fd, _ = open_regular(link)
    try:
        assert os.read(fd, 10) == b"real"
    finally:
        os.close(fd)
    with pytest.raises(OSError) as refused:
        open_regular(link, follow=False)
    assert refused.value.errno == errno.ELOOP and not isinstance(refused.value, NotRegularFile)


def test_a_name_is_opened_in_the_folder_given(tmp_path: Path) -> None:
    """`dir_fd`: the name is looked up in that open folder, not in the working folder."""
    (tmp_path / "inside.txt").write_bytes(b"in")
    dir_fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fd, _ = open_regular("inside.txt", follow=False, dir_fd=dir_fd)
        try:
            assert os.read(fd, 10) == b"in"
        finally:
            os.close(fd)
        with pytest.raises(FileNotFoundError):
            open_regular("missing.txt", dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def test_a_file_is_created_and_opened_for_writing_when_the_flags_say_so(tmp_path: Path) -> None:
    """The state files' writer passes its own flags and mode: the file is created with that mode."""
    path = tmp_path / "new.json"
    fd, info = open_regular(path, os.O_RDWR | os.O_CREAT, 0o600, follow=False)
    try:
        os.write(fd, b"{}")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"{}" and stat.S_IMODE(info.st_mode) & 0o077 == 0

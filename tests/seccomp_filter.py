"""A seccomp filter like a container runtime's default profile, for the tests: ``unshare(2)``
fails with EPERM (Docker's and Kubernetes' RuntimeDefault profiles allow it only with
CAP_SYS_ADMIN), everything else is allowed. Installed in a child between fork and exec
(``preexec_fn``); the child and everything it starts inherit it."""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
AUDIT_ARCH_X86_64, NR_UNSHARE_X86_64 = 0xC000003E, 272
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def _instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


_FILTER = b"".join(
    [
        _instruction(BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _instruction(BPF_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        _instruction(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _instruction(BPF_JEQ_K, 0, 1, NR_UNSHARE_X86_64),
        _instruction(BPF_RET_K, 0, 0, RET_ERRNO | errno.EPERM),
        _instruction(BPF_RET_K, 0, 0, RET_ALLOW),
    ]
)


def forbid_unshare() -> None:
    """Install the filter in this process (call it as ``preexec_fn``)."""
    assert platform.machine() == "x86_64", "the filter is written for x86-64 system calls"
    libc = ctypes.CDLL(None, use_errno=True)
    program = _Program(len(_FILTER) // 8, _FILTER)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")

"""Password checks against the host's PAM stack (``--auth pam``), like the VMS SYSUAF check.

A small ctypes binding to libpam: ``pam_authenticate`` for the password and
``pam_acct_mgmt`` for the account checks PAM modules make (locked, expired,
time restrictions).  It blocks, so the server calls it from a thread; each call
uses its own PAM handle, so calls may run concurrently.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_size_t, c_void_p, cast,
                    pointer, sizeof)

__all__ = ["PAMError", "PAMUnavailable", "pam_check"]

PAM_SUCCESS = 0
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4
PAM_USER_UNKNOWN = 10
PAM_ACCT_EXPIRED = 13
PAM_NEW_AUTHTOK_REQD = 12
PAM_PERM_DENIED = 6
PAM_AUTH_ERR = 7
PAM_SILENT = 0x8000
PAM_DISALLOW_NULL_AUTHTOK = 0x0001


class PAMUnavailable(Exception):
    """libpam cannot be loaded on this host."""


class PAMError(Exception):
    """PAM refused, with the reason word vmspop logs (``bad-password``, ``expired``, ``disabled``)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class _Message(Structure):
    _fields_ = [("msg_style", c_int), ("msg", c_char_p)]


class _Response(Structure):
    _fields_ = [("resp", c_char_p), ("resp_retcode", c_int)]


_CONV = CFUNCTYPE(c_int, c_int, POINTER(POINTER(_Message)), POINTER(POINTER(_Response)), c_void_p)


class _Conversation(Structure):
    _fields_ = [("conv", _CONV), ("appdata_ptr", c_void_p)]


_lib: ctypes.CDLL | None = None


def _libraries() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    global _lib
    name = ctypes.util.find_library("pam")
    if name is None:
        raise PAMUnavailable("libpam is not installed")
    if _lib is None:
        lib = ctypes.CDLL(name)
        lib.pam_start.argtypes = [c_char_p, c_char_p, POINTER(_Conversation), POINTER(c_void_p)]
        lib.pam_start.restype = c_int
        lib.pam_authenticate.argtypes = [c_void_p, c_int]
        lib.pam_acct_mgmt.argtypes = [c_void_p, c_int]
        lib.pam_end.argtypes = [c_void_p, c_int]
        _lib = lib
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.calloc.restype = c_void_p
    libc.calloc.argtypes = [c_size_t, c_size_t]
    libc.strdup.restype = c_void_p
    libc.strdup.argtypes = [c_char_p]
    return _lib, libc


def pam_check(service: str, user: str, password: bytes) -> None:
    """Authenticate ``user`` with ``password`` and run PAM's account checks.

    Args:
        service: the PAM service name (``/etc/pam.d/<service>``).
        user: the user name.
        password: the password, as sent by the client.

    Raises:
        PAMError: refused; ``reason`` says why in vmspop's log vocabulary.
        PAMUnavailable: there is no libpam.
    """
    lib, libc = _libraries()

    @_CONV
    def conversation(count: int, messages: object, responses: object, _: object) -> int:
        # PAM frees the answers with free(), so they must come from malloc.
        array = libc.calloc(count, sizeof(_Response))
        if not array:
            return 5  # PAM_BUF_ERR
        answers = cast(array, POINTER(_Response))
        for i in range(count):
            style = messages[i].contents.msg_style  # type: ignore[index]
            if style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                answers[i].resp = cast(libc.strdup(password), c_char_p)
            answers[i].resp_retcode = 0
        responses[0] = answers  # type: ignore[index]
        return PAM_SUCCESS

    handle = c_void_p()
    conv = _Conversation(conversation, None)
    status = lib.pam_start(service.encode(), user.encode(), pointer(conv), pointer(handle))
    if status != PAM_SUCCESS:
        raise PAMError("pam-error", status)
    try:
        status = lib.pam_authenticate(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)
        if status == PAM_SUCCESS:
            status = lib.pam_acct_mgmt(handle, PAM_SILENT)
            if status == PAM_ACCT_EXPIRED:
                raise PAMError("expired", status)
            if status == PAM_NEW_AUTHTOK_REQD:
                raise PAMError("password-expired", status)
            if status != PAM_SUCCESS:
                raise PAMError("disabled", status)
        elif status == PAM_USER_UNKNOWN:
            raise PAMError("unknown-user", status)
        else:
            raise PAMError("bad-password", status)
    finally:
        lib.pam_end(handle, status)

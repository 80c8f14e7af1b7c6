"""The account an exec check runs as: ``user`` and ``group`` resolved to ids, and whether this
process can switch to them.

Supplementary groups are set deliberately, never inherited from the daemon: a check run as
``postgres`` gets exactly the groups the group database gives ``postgres`` (as ``runuser``,
``su`` and systemd's ``User=`` do), and a numeric uid with no entry in the user database gets
none. Only root can change its user; a daemon that is not root accepts only its own user (and
group), and then changes nothing.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from healthd.errors import quoted

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


class AccountError(ValueError):
    """``user`` or ``group`` (``field``) names no account that can be used."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a child is started with: user, primary group and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    def __str__(self) -> str:
        return f"uid {self.uid}, gid {self.gid}"


def _numeric(text: str, field: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    if value > _MAX_ID:
        raise AccountError(field, f"{field} id {value} is out of range (0-{_MAX_ID})")
    return value


def _group_id(group: str) -> int:
    gid = _numeric(group, "group")
    if gid is not None:
        return gid
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise AccountError("group", f"unknown group {quoted(group)}") from None


def resolve(user: str, group: str | None) -> Credentials:
    """``user`` (name or uid) and ``group`` (name or gid; default: the user's primary group) as
    ids. Raises AccountError naming what is unknown."""
    uid = _numeric(user, "user")
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user)
    except KeyError:
        if uid is None:
            raise AccountError("user", f"unknown user {quoted(user)}") from None
        entry = None  # a bare uid (a container's, say) is allowed without a user database entry
    if entry is not None:
        uid = entry.pw_uid
    assert uid is not None
    if group is not None:
        gid = _group_id(group)
    elif entry is not None:
        gid = entry.pw_gid
    else:
        raise AccountError(
            "user", f"uid {uid} has no entry in the user database: set group as well"
        )
    groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry is not None else ()
    return Credentials(uid, gid, groups)


def unusable(creds: Credentials) -> str | None:
    """Why this process cannot start children with ``creds``, or None (it can)."""
    euid = os.geteuid()
    if euid == 0:
        return None
    if creds.uid != euid:
        return f"healthd runs as uid {euid}, not root, so it cannot run checks as uid {creds.uid}"
    if creds.gid != os.getegid():
        return f"healthd runs as uid {euid}, not root, so it cannot run checks with gid {creds.gid}"
    return None


def for_child(creds: Credentials) -> Credentials | None:
    """The credentials to switch to, or None when the child runs as this process already (a
    daemon that is not root and was given its own user)."""
    return creds if os.geteuid() == 0 else None

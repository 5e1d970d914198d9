"""The shipped seccomp profile: valid, an errno default, and every dangerous call denied."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

import pytest

from ws_sandbox.backend import container_config
from ws_sandbox.exceptions import ConfigError
from ws_sandbox.settings import SHIPPED_SECCOMP_PROFILE, Settings

# Never allowed, with or without arguments (runtime/seccomp.md says why, group by group).
DENIED = [
    "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "pivot_root", "chroot", "unshare", "setns", "clone3",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "open_by_handle_at", "name_to_handle_at",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "socketcall",
    "lookup_dcookie", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_settime64",
    "adjtimex", "clock_adjtime", "vm86", "vm86old", "quotactl", "nfsservctl", "mbind",
    "migrate_pages", "move_pages", "set_mempolicy", "syslog", "sethostname",
    "process_madvise", "create_module", "fanotify_mark", "modify_ldt", "stime", "quotactl_fd",
    "get_mempolicy", "set_mempolicy_home_node", "setdomainname", "vhangup",
    # obsolete calls
    "uselib", "ustat", "sysfs", "_sysctl", "get_kernel_syms", "query_module", "afs_syscall",
    "tuxcall", "security", "getpmsg", "putpmsg",
]
SECCOMP_DOC = Path(__file__).resolve().parents[2] / "runtime" / "seccomp.md"

CLONE_NAMESPACE_FLAGS = 0x7E020000  # NEWNS NEWCGROUP NEWUTS NEWIPC NEWUSER NEWPID NEWNET


def profile() -> dict[str, Any]:
    data = json.loads(SHIPPED_SECCOMP_PROFILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def allow_rules(name: str) -> list[dict[str, Any]]:
    return [r for r in profile()["syscalls"]
            if name in r["names"] and r["action"] == "SCMP_ACT_ALLOW"]


def test_default_action_is_an_errno() -> None:
    data = profile()
    assert data["defaultAction"] == "SCMP_ACT_ERRNO"
    assert data["defaultErrnoRet"] == errno.EPERM


@pytest.mark.parametrize("name", DENIED)
def test_dangerous_syscall_is_in_no_allow_rule(name: str) -> None:
    assert allow_rules(name) == []


def test_denied_list_is_the_documented_one() -> None:
    """Every call runtime/seccomp.md names under "Denied groups" is in DENIED and back (a
    call allowed with arguments, "`clone` with ...", and "beyond safe values" are not)."""
    section = SECCOMP_DOC.read_text(encoding="utf-8").split("## Denied groups, and why")[1]
    section = section.split("\n## ")[0]
    documented = set()
    for heading in re.findall(r"^### (.*)$", section, re.MULTILINE):
        if "beyond" in heading:
            continue
        documented |= set(re.findall(r"`([a-z_][a-z0-9_]*)`(?! with)", heading))
    assert len(documented) > 70
    assert documented == set(DENIED)


def test_clone3_answers_enosys_so_libc_falls_back_to_checked_clone() -> None:
    (rule,) = [r for r in profile()["syscalls"] if "clone3" in r["names"]]
    assert rule["action"] == "SCMP_ACT_ERRNO"
    assert rule["errnoRet"] == errno.ENOSYS


def test_clone_never_allowed_with_namespace_flags() -> None:
    rules = allow_rules("clone")
    assert rules
    for rule in rules:
        (arg,) = rule["args"]
        assert arg["op"] == "SCMP_CMP_MASKED_EQ"
        assert arg["value"] == CLONE_NAMESPACE_FLAGS
        assert arg.get("valueTwo", 0) == 0


@pytest.mark.parametrize(("name", "mode_index"), [("mknod", 1), ("mknodat", 2)])
def test_mknod_makes_no_device_nodes(name: str, mode_index: int) -> None:
    """Files, FIFOs and sockets only: under runc the missing CAP_MKNOD refuses devices too,
    but gVisor let a sandbox make and open /dev/fuse and /dev/net/tun nodes without it."""
    s_ifmt = 0o170000
    rules = allow_rules(name)
    kinds = set()
    for rule in rules:
        (arg,) = rule["args"]
        assert arg["op"] == "SCMP_CMP_MASKED_EQ"
        assert arg["index"] == mode_index
        assert arg["value"] == s_ifmt
        kinds.add(arg["valueTwo"])
    assert kinds == {0, 0o100000, 0o010000, 0o140000}  # none, S_IFREG, S_IFIFO, S_IFSOCK
    assert not kinds & {0o020000, 0o060000}  # S_IFCHR, S_IFBLK


def test_personality_only_safe_values() -> None:
    values = {r["args"][0]["value"] for r in allow_rules("personality")}
    assert values == {0x0, 0x8, 0xFFFFFFFF}
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in allow_rules("personality"))


def socket_rules(data: dict[str, Any]) -> dict[int, tuple[str, int | None]]:
    """``socket()``'s rules: family -> (action, errno)."""
    rules = [r for r in data["syscalls"] if "socket" in r["names"]]
    assert all(r["names"] == ["socket"] and len(r["args"]) == 1 for r in rules)
    assert all(r["args"][0]["index"] == 0 and r["args"][0]["op"] == "SCMP_CMP_EQ"
               for r in rules)
    return {r["args"][0]["value"]: (r["action"], r.get("errnoRet")) for r in rules}


def test_socket_families_are_an_allow_list() -> None:
    """Unix, IPv4, IPv6 and netlink, each by a rule of its own (one rule comparing the
    family three times let every family through, VSOCK included); no other family."""
    allow = ("SCMP_ACT_ALLOW", None)
    assert socket_rules(profile()) == {1: allow, 2: allow, 10: allow, 16: allow}


@pytest.mark.parametrize(("env", "inet"), [
    ({}, False),  # runc: loopback sockets take the host's kernel memory, outside the limit
    ({"ALLOW_LOOPBACK_SOCKETS": "true"}, True),
    ({"CONTAINER_RUNTIME": "runsc"}, True),  # gVisor's network stack is in its memory
    ({"NETWORK_MODE": "bridge", "ALLOW_UNSAFE_NETWORK": "true"}, True),
])
def test_tcp_and_udp_sockets_answer_eafnosupport_under_runc(env: dict[str, str],
                                                            inet: bool) -> None:
    """Connections nobody accepts, and loopback socket buffers, are the host's kernel
    memory, not the sandbox's: one sandbox took gigabytes in seconds (a review)."""
    settings = Settings.from_env(env)
    assert settings.loopback_sockets is inet
    opts = container_config(settings, "python", "p")["HostConfig"]["SecurityOpt"]
    (seccomp,) = [o for o in opts if o.startswith("seccomp=")]
    rules = socket_rules(json.loads(seccomp.removeprefix("seccomp=")))
    inet_rule = ("SCMP_ACT_ALLOW", None) if inet else ("SCMP_ACT_ERRNO", errno.EAFNOSUPPORT)
    assert rules == {1: ("SCMP_ACT_ALLOW", None), 2: inet_rule, 10: inet_rule,
                     16: ("SCMP_ACT_ALLOW", None)}


def test_everyday_syscalls_still_allowed() -> None:
    for name in ("read", "write", "openat", "mmap", "execve", "wait4", "futex", "epoll_wait",
                 "pipe2", "socketpair", "prctl", "getrandom", "statx", "rseq"):
        assert allow_rules(name), name


def test_shipped_profile_is_the_default_and_reaches_the_container() -> None:
    settings = Settings.from_env({"ALLOW_LOOPBACK_SOCKETS": "true"})  # (the file as it is)
    assert settings.seccomp_profile_path == SHIPPED_SECCOMP_PROFILE
    opts = container_config(settings, "python", "p")["HostConfig"]["SecurityOpt"]
    (seccomp,) = [o for o in opts if o.startswith("seccomp=")]
    assert json.loads(seccomp.removeprefix("seccomp=")) == profile()
    assert "no-new-privileges:true" in opts


def test_under_runsc_clone3_goes_through_and_pselect6_gets_gvisors_name() -> None:
    # runsc --oci-seccomp answers every errno rule with EPERM (google/gvisor#14688), which
    # would stop glibc's clone3-to-clone fallback: clone3 goes through to gVisor's kernel,
    # which answers ENOSYS. gVisor's table calls pselect6 "pselect": its rule names both.
    # Every other rule, and the default, stay as shipped.
    settings = Settings.from_env({"CONTAINER_RUNTIME": "runsc"})
    opts = container_config(settings, "python", "p")["HostConfig"]["SecurityOpt"]
    (seccomp,) = [o for o in opts if o.startswith("seccomp=")]
    runsc = json.loads(seccomp.removeprefix("seccomp="))
    shipped = profile()
    changed = [(a, b) for a, b in zip(shipped["syscalls"], runsc["syscalls"], strict=True)
               if a != b]
    assert len(changed) == 2, changed
    (clone3, pselect) = sorted(changed, key=lambda pair: "pselect6" in pair[0]["names"])
    assert clone3 == ({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                       "errnoRet": errno.ENOSYS},
                      {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"})
    before, after = pselect
    assert after == {**before, "names": [*before["names"], "pselect"]}
    assert before["action"] == "SCMP_ACT_ALLOW"
    assert {k: v for k, v in runsc.items() if k != "syscalls"} == \
        {k: v for k, v in shipped.items() if k != "syscalls"}
    for name in DENIED:
        if name != "clone3":
            assert not [r for r in runsc["syscalls"]
                        if name in r["names"] and r["action"] == "SCMP_ACT_ALLOW"], name


def test_runsc_variant_touches_only_its_own_names(tmp_path: Any) -> None:
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": [], "action": "SCMP_ACT_ERRNO"},
        {"names": ["clone3", "unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["pselect6"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}))
    settings = Settings.from_env({"CONTAINER_RUNTIME": "runsc", "SECCOMP_PROFILE": str(custom)})
    opts = container_config(settings, "python", "p")["HostConfig"]["SecurityOpt"]
    (seccomp,) = [o for o in opts if o.startswith("seccomp=")]
    rules = json.loads(custom.read_text())["syscalls"]
    rules[2]["names"].append("pselect")  # a deny rule names gVisor's spelling too
    assert json.loads(seccomp.removeprefix("seccomp="))["syscalls"] == rules


@pytest.mark.parametrize("value", ["unconfined", "Unconfined", " unconfined "])
def test_unconfined_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="unconfined"):
        Settings.from_env({"SECCOMP_PROFILE": value})


def test_missing_or_bad_profile_is_refused_at_start(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="cannot load"):
        Settings.from_env({"SECCOMP_PROFILE": str(tmp_path / "nope.json")})
    bad = tmp_path / "bad.json"
    bad.write_text('{"syscalls": []}')
    with pytest.raises(ConfigError, match="defaultAction"):
        Settings.from_env({"SECCOMP_PROFILE": str(bad)})


def test_linux_aio_answers_enosys() -> None:
    """AIO contexts count against one limit for the whole host: a cell took them all, and
    io_setup failed on the host and in every other sandbox (a review)."""
    (rule,) = [r for r in profile()["syscalls"] if "io_setup" in r["names"]]
    assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == errno.ENOSYS
    assert set(rule["names"]) == {"io_setup", "io_destroy", "io_submit", "io_cancel",
                                  "io_getevents", "io_pgetevents", "io_pgetevents_time64"}

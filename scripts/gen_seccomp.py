"""Regenerate ``runtime/seccomp.json`` (see ``runtime/seccomp.md`` for every decision).

Derived from the Moby (Docker) default seccomp profile (Apache-2.0), with the rules that
only apply to added capabilities removed (sandboxes have none) and the groups listed in
``DENIED`` taken out of the allow-list. Run: ``python scripts/gen_seccomp.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

# Moby's unconditional allow-list (profiles/seccomp/default.json), one name per word.
MOBY_ALLOW = Path(__file__).with_name("seccomp_moby_allow.txt").read_text().split()

# Linux AIO: denied with ENOSYS (its own rule, below).
AIO = {"io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
       "io_pgetevents_time64"}

# Denied here although Docker's default allows them; the reasons are in runtime/seccomp.md.
DENIED_FROM_MOBY = AIO | {
    "adjtimex", "clock_adjtime", "clock_adjtime64",          # clock
    "io_uring_setup", "io_uring_enter", "io_uring_register",  # io_uring
    "name_to_handle_at",                                       # file handles
    "socketcall",                                              # i386's socket multiplexer
    "fanotify_mark",                                           # fanotify
}

# Every syscall this profile must never allow (the unit test checks each one).
DENIED = sorted(DENIED_FROM_MOBY | {
    "mount", "umount", "umount2", "mount_setattr", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "pivot_root", "chroot",
    "unshare", "setns", "clone3",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "process_madvise",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "syslog", "sethostname", "setdomainname",
    "open_by_handle_at", "lookup_dcookie", "fanotify_init",
    "iopl", "ioperm", "vm86", "vm86old", "modify_ldt",
    "settimeofday", "stime", "clock_settime", "clock_settime64",
    "quotactl", "quotactl_fd", "nfsservctl", "vhangup",
    "mbind", "migrate_pages", "move_pages", "set_mempolicy", "get_mempolicy",
    "set_mempolicy_home_node", "uselib", "ustat", "sysfs", "_sysctl",
    "create_module", "get_kernel_syms", "query_module", "afs_syscall", "tuxcall",
    "security", "getpmsg", "putpmsg",
})

# CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET: clone may set none of them.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# The socket families a sandbox may open (each its own rule: libseccomp let everything through
# for one rule comparing the same argument three times): Unix sockets, netlink (getaddrinfo,
# if_nameindex) and the loopback's TCP and UDP, which the service answers EAFNOSUPPORT
# instead under runc unless ALLOW_LOOPBACK_SOCKETS (settings.load_seccomp_profile). No other
# family (VSOCK, ALG, TIPC, RDS, CAN, ...): kernel code no cell needs.
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)
PERSONALITY_SAFE = (0x0, 0x8, 0xFFFFFFFF)  # PER_LINUX, PER_LINUX32, query current
# mknod and mknodat make only files, FIFOs and sockets: their mode's file type (S_IFMT) is
# none (a regular file), S_IFREG, S_IFIFO or S_IFSOCK, never S_IFCHR nor S_IFBLK.
S_IFMT = 0o170000
MKNOD_TYPES = (0, 0o100000, 0o010000, 0o140000)
MKNOD_MODE_ARG = {"mknod": 1, "mknodat": 2}


def profile() -> dict[str, object]:
    allow = sorted(n for n in MOBY_ALLOW if n not in DENIED and n not in MKNOD_MODE_ARG)
    rules: list[dict[str, object]] = [{"names": allow, "action": "SCMP_ACT_ALLOW"}]
    for family in SOCKET_FAMILIES:
        rules.append({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}]})
    for name, index in MKNOD_MODE_ARG.items():
        for kind in MKNOD_TYPES:
            rules.append({"names": [name], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": index, "value": S_IFMT, "valueTwo": kind,
                                    "op": "SCMP_CMP_MASKED_EQ"}]})
    for value in PERSONALITY_SAFE:
        rules.append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]})
    rules.append({"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                  "includes": {"arches": ["amd64", "x32"]}})
    rules.append({"names": ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                            "breakpoint", "cacheflush", "set_tls"],
                  "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}})
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                            "op": "SCMP_CMP_MASKED_EQ"}],
                  "excludes": {"arches": ["s390", "s390x"]}})
    rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 1, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                            "op": "SCMP_CMP_MASKED_EQ"}],
                  "includes": {"arches": ["s390", "s390x"]}})
    # clone3 passes its flags in memory, where seccomp cannot look: answer ENOSYS so that
    # glibc and Node fall back to clone, whose flags the rule above checks.
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
    # Linux AIO's contexts count against one limit for the whole host (fs.aio-max-nr): not
    # ours to take. ENOSYS, as a kernel without AIO answers: libaio's users fall back.
    rules.append({"names": sorted(AIO), "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        # The native ABI alone: a call of the 32-bit one (int 0x80) is killed (SIGSYS).
        # There, libseccomp rewrites socket()'s rules into rules of socketcall, whose first
        # argument is the call's number, not the family: SYS_SOCKET was let through, and a
        # cell got IPv4, IPv6 and VSOCK sockets past the family rules (a review).
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
        ],
        "syscalls": rules,
    }


def main() -> None:
    target = Path(__file__).resolve().parent.parent / "runtime" / "seccomp.json"
    target.write_text(json.dumps(profile(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

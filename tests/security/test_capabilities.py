"""No capability, under either runtime: every privileged operation a cell tries is refused.

Sandboxes run with every capability dropped. Under runc the kernel refuses what a missing
``CAP_*`` guards; gVisor (runsc) implements those checks again in its own kernel, and it
missed one (``mknod`` of character devices, now refused by the seccomp profile:
``runtime/seccomp.md``). Each test here runs one cell per group of capabilities; the cell
prints ``<check> <outcome>`` per operation, ``OK`` (or ``OK:<value>``) when it succeeded,
the errno's name when it failed, and every check is asserted on its own. What
``test_abuse.py`` already covers (``test_no_privilege``, ``test_dangerous_syscall_is_denied``,
sysrq and kernel knobs, setuid binaries, mknod in ``test_limits.py``) is not repeated.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Service
from tests.security.conftest import RUNSC
from tests.security.test_abuse import run, still_works
from ws_sandbox.client import CellResult, connect

pytestmark = pytest.mark.docker

PRELUDE = r"""
import ctypes, errno, fcntl, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    if r == -1:
        raise OSError(ctypes.get_errno(), "")
    return r
def buf(data):
    return ctypes.addressof(ctypes.create_string_buffer(data))
def check(name, fn):
    try:
        r = fn()
        out = "OK" if r is None else "OK:" + str(r).replace(" ", "")
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:
        out = "X:" + type(e).__name__
    print(name, out, flush=True)
def write(path, value):
    with open(path, "w") as f:
        f.write(value)
uid = os.getuid()
"""


def outcomes(r: CellResult, names: set[str]) -> dict[str, str]:
    """The cell's ``<check> <outcome>`` lines, every expected check present once."""
    assert r.status == "success", r
    seen = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert set(seen) == names, (sorted(set(seen) ^ names), r.stdout, r.stderr)
    return seen


def assert_refused(seen: dict[str, str], names: set[str], what: str) -> None:
    """Each named operation failed with an errno (EPERM, EACCES, ENOTTY, ...)."""
    allowed = {n: seen[n] for n in sorted(names) if seen[n].startswith(("OK", "X:"))}
    assert not allowed, (f"{what}: allowed without the capability (or the probe broke)"
                         f" under {'runsc' if RUNSC else 'runc'}: {allowed}")


# --------------------------------------------------------------------------- files

FILES = PRELUDE + r"""
f, d = "/tmp/caps_f", "/tmp/caps_d"
open(f, "w").close()
os.makedirs(d, exist_ok=True)
open(d + "/x", "w").close()
# CAP_CHOWN: giving a file away, or to a group we are not in.
check("chown_to_root", lambda: os.chown(f, 0, 0))
check("chown_to_other_uid", lambda: os.chown(f, 65534, -1))
check("chown_to_other_gid", lambda: os.chown(f, -1, 0))
check("fchown_to_root", lambda: os.fchown(os.open(f, os.O_RDONLY), 0, 0))
check("chown_root_file_on_writable_fs", lambda: os.chown("/dev/null", uid, uid))
# CAP_FOWNER: root's files on the engine's writable /dev and /dev/shm tmpfs.
check("chmod_root_file", lambda: os.chmod("/dev/null", 0o600))
check("utime_root_file", lambda: os.utime("/dev/null", (1, 1)))
check("chmod_root_dir", lambda: os.chmod("/dev/shm", 0o777))
check("o_noatime_root_file", lambda: os.close(os.open("/etc/passwd", os.O_RDONLY | os.O_NOATIME)))
# CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: mode bits bind even the owner, and root's files.
os.chmod(f, 0)
os.chmod(d, 0)
check("read_own_mode000_file", lambda: open(f).close())
check("write_own_mode000_file", lambda: open(f, "w").close())
check("list_own_mode000_dir", lambda: os.listdir(d))
check("stat_in_own_mode000_dir", lambda: os.stat(d + "/x"))
os.chmod(d, 0o700)
os.chmod(f, 0o600)
check("read_etc_shadow", lambda: open("/etc/shadow").close())
check("list_root_home", lambda: os.listdir("/root"))
check("create_in_root_dir_on_writable_fs", lambda: open("/dev/caps_evil", "w").close())
# CAP_FSETID / CAP_SETFCAP / CAP_SYS_ADMIN: privileged extended attributes.
check("xattr_trusted", lambda: os.setxattr(f, "trusted.x", b"v"))
check("xattr_security", lambda: os.setxattr(f, "security.x", b"v"))
check("xattr_file_capability", lambda: os.setxattr(
    f, "security.capability", struct.pack("<IIIII", 0x02000001, 0xFFFFFFFF, 0, 0, 0)))
check("xattr_user_on_root_file", lambda: os.setxattr("/dev/null", "user.x", b"v"))
# CAP_LINUX_IMMUTABLE: FS_IOC_SETFLAGS with the immutable and append-only flags.
def chattr(flag):
    fd = os.open(f, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("l", flag))
    finally:
        os.close(fd)
check("chattr_immutable", lambda: chattr(0x10))
check("chattr_append_only", lambda: chattr(0x20))
# CAP_LEASE: a lease on a file we do not own.
def lease():
    fd = os.open("/etc/passwd", os.O_RDONLY)
    try:
        fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE
    finally:
        os.close(fd)
check("lease_root_file", lease)
st = os.stat(f)
check("owner_after", lambda: (st.st_uid == uid, st.st_gid == uid))
check("still_writable_after", lambda: open(f, "a").close())
"""

FILE_CHECKS = {
    "chown_to_root", "chown_to_other_uid", "chown_to_other_gid", "fchown_to_root",
    "chown_root_file_on_writable_fs", "chmod_root_file", "utime_root_file", "chmod_root_dir",
    "o_noatime_root_file", "read_own_mode000_file", "write_own_mode000_file",
    "list_own_mode000_dir", "stat_in_own_mode000_dir", "read_etc_shadow", "list_root_home",
    "create_in_root_dir_on_writable_fs", "xattr_trusted", "xattr_security",
    "xattr_file_capability", "xattr_user_on_root_file", "chattr_immutable",
    "chattr_append_only", "lease_root_file",
}


async def test_file_ownership_and_permission_checks_hold(battery: Service) -> None:
    """CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETFCAP,
    CAP_LINUX_IMMUTABLE, CAP_LEASE, and CAP_SYS_ADMIN's trusted/security xattrs."""
    names = FILE_CHECKS | {"owner_after", "still_writable_after"}
    seen = outcomes(await run(battery, "python", FILES, timeout=20), names)
    refused = set(FILE_CHECKS)
    if RUNSC:
        # RUNSC: gVisor ignores O_NOATIME's owner check (Linux: owner or CAP_FOWNER). Harmless:
        # the only files not the sandbox's own are on the read-only root (no atime to keep)
        # or the engine's /dev, and the flag only spares an atime update.
        assert seen["o_noatime_root_file"] in ("OK", "EPERM"), seen
        refused.discard("o_noatime_root_file")
    assert_refused(seen, refused, "file capability")
    assert seen["owner_after"] == "OK:(True,True)", seen
    assert seen["still_writable_after"] == "OK", seen


# --------------------------------------------------------------------------- identity

IDENTITY = PRELUDE + r"""
check("setuid_0", lambda: os.setuid(0))
check("setresuid_other", lambda: os.setresuid(-1, 65534, -1))
check("setreuid_other", lambda: os.setreuid(65534, -1))
check("setgid_0", lambda: os.setgid(0))
check("setresgid_other", lambda: os.setresgid(-1, 65534, -1))
check("setgroups_0", lambda: os.setgroups([0]))
libc.setfsuid(0)
libc.setfsgid(0)
# CAP_SETPCAP: no capability can be raised, made ambient, or locked in by securebits.
hdr = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
check("capset_raise", lambda: sc(126, buf(hdr), buf(b"\xff" * 24)))
check("ambient_raise", lambda: sc(157, 47, 2, 0, 0, 0))  # PR_CAP_AMBIENT_RAISE CAP_CHOWN
check("set_securebits", lambda: sc(157, 28, 0x2F, 0, 0, 0))
check("capbset_drop", lambda: sc(157, 24, 0, 0, 0, 0))
status = {l.split(":")[0]: l.split()[1:] for l in open("/proc/self/status") if ":" in l}
check("ids_after", lambda: (status["Uid"] + status["Gid"] == [str(uid)] * 8,
                           set(os.getgroups()) <= {uid}))
check("caps_after", lambda: sorted({status[c][0] for c in status if c.startswith("Cap")}))
# CAP_KILL: nothing of another uid runs in the sandbox to be signalled.
def other_uids():
    found = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                found |= {l.split()[1] for l in open(f"/proc/{p}/status") if l.startswith("Uid")}
            except OSError:
                pass
    return sorted(found - {str(uid)})
check("other_uid_processes", other_uids)
"""

IDENTITY_CHECKS = {"setuid_0", "setresuid_other", "setreuid_other", "setgid_0",
                   "setresgid_other", "setgroups_0", "capset_raise", "ambient_raise",
                   "set_securebits", "capbset_drop"}


async def test_identity_and_capabilities_cannot_change(battery: Service) -> None:
    """CAP_SETUID, CAP_SETGID, CAP_SETPCAP; and CAP_KILL has no other uid to reach.
    (Signals to the agent, PID 1, are test_abuse's test_user_code_cannot_kill_or_stop_the_agent.)"""
    names = IDENTITY_CHECKS | {"ids_after", "caps_after", "other_uid_processes"}
    r = await run(battery, "python", IDENTITY, timeout=20)
    seen = outcomes(r, names)
    assert_refused(seen, IDENTITY_CHECKS, "identity")
    # Real, effective, saved and file-system uid and gid are still the sandbox's own
    # (setfsuid/setfsgid(0) were tried too: runc answers with the old id, gVisor with -1).
    assert seen["ids_after"] == "OK:(True,True)", seen  # no supplementary group but its own
    assert seen["caps_after"] == "OK:['0000000000000000']", seen
    assert seen["other_uid_processes"] == "OK:[]", seen


# --------------------------------------------------------------------------- network

NETWORK = PRELUDE + r"""
# CAP_NET_RAW
check("raw_icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close())
check("raw_icmpv6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, 58).close())
check("raw_tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 6).close())
check("packet_raw", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300).close())
check("packet_dgram", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300).close())
# CAP_NET_BIND_SERVICE
def bind(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    finally:
        s.close()
check("bind_port_80", lambda: bind(80))
check("unprivileged_port_start",
      lambda: open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read().strip())
# CAP_NET_ADMIN: interface ioctls, rtnetlink, and the privileged socket options.
def ifreq(req, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s, req, struct.pack("16s", b"lo") + payload)
    finally:
        s.close()
check("lo_down_SIOCSIFFLAGS", lambda: ifreq(0x8914, struct.pack("H22x", 0x8)))
check("lo_mtu_SIOCSIFMTU", lambda: ifreq(0x8922, struct.pack("i20x", 1280)))
check("lo_addr_SIOCSIFADDR", lambda: ifreq(0x8916, struct.pack(
    "HH4s8x", socket.AF_INET, 0, socket.inet_aton("10.9.9.9"))))
def rtnl_link_down():
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        body = struct.pack("BxHiII", 0, 0, socket.if_nametoindex("lo"), 0, 1)
        s.send(struct.pack("IHHII", 16 + len(body), 16, 0x5, 1, 0) + body)  # RTM_NEWLINK
        err = struct.unpack_from("i", s.recv(4096), 16)[0]
        if err:
            raise OSError(-err, "")
    finally:
        s.close()
check("rtnl_link_down", rtnl_link_down)
def sso(level, opt, val, typ=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, typ)
    try:
        s.setsockopt(level, opt, val)
    finally:
        s.close()
check("SO_MARK", lambda: sso(socket.SOL_SOCKET, 36, 1))
check("SO_PRIORITY_7", lambda: sso(socket.SOL_SOCKET, socket.SO_PRIORITY, 7))
check("SO_RCVBUFFORCE", lambda: sso(socket.SOL_SOCKET, 33, 1 << 20))
check("SO_SNDBUFFORCE", lambda: sso(socket.SOL_SOCKET, 32, 1 << 20))
check("SO_DEBUG", lambda: sso(socket.SOL_SOCKET, socket.SO_DEBUG, 1, socket.SOCK_STREAM))
check("IP_TRANSPARENT", lambda: sso(socket.SOL_IP, 19, 1))
# What the two would give, asked for either way: a bind to an address not the sandbox's,
# a send buffer beyond the one SO_SNDBUF may ask for.
def transparent_bind():
    s = socket.socket()
    try:
        try:
            s.setsockopt(socket.SOL_IP, 19, 1)
        except OSError:
            pass
        s.bind(("10.9.9.9", 8080))
    finally:
        s.close()
check("bind_foreign_address", transparent_bind)
def forced_sndbuf():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
        capped = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        try:
            s.setsockopt(socket.SOL_SOCKET, 32, 1 << 30)
        except OSError:
            pass
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= capped
    finally:
        s.close()
check("sndbuf_within_cap", forced_sndbuf)
# CAP_AUDIT_WRITE / CAP_AUDIT_CONTROL: the audit netlink socket.
def audit(kind):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)  # NETLINK_AUDIT
    try:
        s.send(struct.pack("IHHII", 21, kind, 0x5, 1, 0) + b"evil\0")
        err = struct.unpack_from("i", s.recv(4096), 16)[0]
        if err:
            raise OSError(-err, "")
    finally:
        s.close()
check("audit_user_message", lambda: audit(1100))
check("audit_set", lambda: audit(1001))
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
c = socket.create_connection(s.getsockname())
check("loopback_still_works", lambda: c.send(b"x") == 1 and s.accept()[0].recv(1) == b"x")
"""

NETWORK_CHECKS = {"raw_icmp", "raw_icmpv6", "raw_tcp", "packet_raw", "packet_dgram",
                  "lo_down_SIOCSIFFLAGS", "lo_mtu_SIOCSIFMTU", "lo_addr_SIOCSIFADDR",
                  "rtnl_link_down", "SO_MARK", "SO_PRIORITY_7", "SO_RCVBUFFORCE",
                  "SO_SNDBUFFORCE", "SO_DEBUG", "IP_TRANSPARENT", "audit_user_message",
                  "audit_set"}


async def test_network_privileges_are_refused(battery: Service) -> None:
    """CAP_NET_RAW, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE/CONTROL."""
    names = NETWORK_CHECKS | {"bind_port_80", "unprivileged_port_start",
                              "loopback_still_works", "bind_foreign_address",
                              "sndbuf_within_cap"}
    async with await connect(battery.url) as s:
        seen = outcomes(await s.execute(NETWORK, timeout=20), names)
        await still_works(s)
    refused = set(NETWORK_CHECKS)
    if RUNSC:
        # RUNSC: gVisor 20221219 accepts IP_TRANSPARENT and SO_SNDBUFFORCE without
        # CAP_NET_ADMIN but gives them no effect, which the cell checks: a transparent
        # socket still cannot bind an address not the sandbox's (EADDRNOTAVAIL), and a
        # forced send buffer stays at SO_SNDBUF's cap. SO_MARK, SO_PRIORITY above 6 and
        # SO_DEBUG are accepted too (reading them back gives ENOPROTOOPT): they set fields
        # of gVisor's own network stack, whose only interface in a sandbox is loopback
        # (runsc runs with --network=none); no packet, mark or priority reaches the host.
        for lenient in ("IP_TRANSPARENT", "SO_SNDBUFFORCE", "SO_MARK", "SO_PRIORITY_7",
                        "SO_DEBUG"):
            assert seen[lenient] in ("OK", "EPERM"), seen
            refused.discard(lenient)
    assert_refused(seen, refused, "network capability")
    assert seen["bind_foreign_address"] == "EADDRNOTAVAIL", seen
    assert seen["sndbuf_within_cap"] == "OK:True", seen
    assert seen["loopback_still_works"] == "OK:True", seen
    # Port 80 is not privileged in a container: the engine sets the namespaced sysctl
    # net.ipv4.ip_unprivileged_port_start=0 (Docker >= 20.10), so binding it on the
    # sandbox's own loopback (no other interface exists) needs no CAP_NET_BIND_SERVICE.
    # RUNSC: gVisor has no such sysctl file and binds it the same way.
    if RUNSC:
        assert seen["unprivileged_port_start"] == "ENOENT", seen
        assert seen["bind_port_80"] == "OK", seen
    else:
        start = seen["unprivileged_port_start"].removeprefix("OK:")
        assert seen["bind_port_80"] == ("OK" if int(start) <= 80 else "EACCES"), seen


# --------------------------------------------------------------------------- resources

RESOURCES = PRELUDE + r"""
import resource
# CAP_SYS_RESOURCE: hard limits, the OOM score, pipe sizes, prctl(PR_SET_MM).
def raise_hard(res):
    lim = (ctypes.c_ulong * 2)()
    libc.getrlimit(res, lim)
    if lim[1] == 2**64 - 1:
        return "unlimited"
    lim[0] = lim[1] = lim[1] + 1
    return sc(160, res, ctypes.addressof(lim))  # setrlimit, errno as is
check("raise_hard_nofile", lambda: raise_hard(resource.RLIMIT_NOFILE))
check("raise_hard_fsize", lambda: raise_hard(resource.RLIMIT_FSIZE))
check("raise_hard_core", lambda: raise_hard(resource.RLIMIT_CORE))
check("raise_hard_memlock", lambda: raise_hard(resource.RLIMIT_MEMLOCK))
check("raise_hard_nproc", lambda: raise_hard(resource.RLIMIT_NPROC))
start = int(open("/proc/self/oom_score_adj").read())
check("oom_score_adj_start", lambda: start)
check("oom_score_adj_lower", lambda: write("/proc/self/oom_score_adj", str(min(start, 0) - 1)))
check("oom_score_adj_-1000", lambda: write("/proc/self/oom_score_adj", "-1000"))
check("oom_score_adj_pid1_-1000", lambda: write("/proc/1/oom_score_adj", "-1000"))
def pipe_above_max():
    try:
        mx = int(open("/proc/sys/fs/pipe-max-size").read())
    except OSError:
        mx = 1 << 20
    r, w = os.pipe()
    try:
        return fcntl.fcntl(w, 1031, mx * 2)  # F_SETPIPE_SZ
    finally:
        os.close(r)
        os.close(w)
check("pipe_size_above_max", pipe_above_max)
check("prctl_set_mm_start_brk", lambda: sc(157, 35, 3, 0x10000, 0, 0))
# CAP_SYS_NICE
check("nice_-5", lambda: os.setpriority(os.PRIO_PROCESS, 0, -5))
check("sched_fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
check("sched_rr", lambda: os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1)))
check("ioprio_realtime", lambda: sc(251, 1, 0, 1 << 13))  # IOPRIO_CLASS_RT
check("priority_after", lambda: (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)))
# CAP_IPC_LOCK: locking more than RLIMIT_MEMLOCK.
lim = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
check("memlock_limit", lambda: lim if lim != resource.RLIM_INFINITY else "unlimited")
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
if lim != resource.RLIM_INFINITY:
    big = ctypes.create_string_buffer(lim + 16 * 4096)
    def mlock():
        ctypes.set_errno(0)
        if libc.mlock(ctypes.addressof(big), len(big)) != 0:
            raise OSError(ctypes.get_errno(), "")
    check("mlock_above_limit", mlock)
libc.shmat.restype = ctypes.c_void_p
# CAP_IPC_OWNER: System V objects of mode 0 refuse even their owner.
def shmat_mode0():
    i = libc.shmget(0, 4096, 0o1000)  # IPC_PRIVATE, IPC_CREAT, mode 0
    if i < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    try:
        ctypes.set_errno(0)
        if libc.shmat(i, None, 0) in (None, 2**64 - 1):
            raise OSError(ctypes.get_errno(), "")
    finally:
        libc.shmctl(i, 0, None)  # IPC_RMID
check("shmat_mode000", shmat_mode0)
def msgsnd_mode0():
    i = libc.msgget(0, 0o1000)
    if i < 0:
        raise OSError(ctypes.get_errno(), "msgget")
    try:
        ctypes.set_errno(0)
        if libc.msgsnd(i, buf(struct.pack("l", 1) + b"x"), 1, 0o4000) != 0:  # IPC_NOWAIT
            raise OSError(ctypes.get_errno(), "")
    finally:
        libc.msgctl(i, 0, None)
check("msgsnd_mode000", msgsnd_mode0)
"""

RESOURCE_CHECKS = {"raise_hard_nofile", "raise_hard_fsize", "raise_hard_core",
                   "raise_hard_memlock", "oom_score_adj_lower", "oom_score_adj_-1000",
                   "oom_score_adj_pid1_-1000", "pipe_size_above_max", "prctl_set_mm_start_brk",
                   "nice_-5", "sched_fifo", "sched_rr", "ioprio_realtime",
                   "mlock_above_limit", "shmat_mode000", "msgsnd_mode000"}


async def test_resource_and_scheduling_privileges_are_refused(battery: Service) -> None:
    """CAP_SYS_RESOURCE, CAP_SYS_NICE, CAP_IPC_LOCK, CAP_IPC_OWNER."""
    names = RESOURCE_CHECKS | {"raise_hard_nproc", "oom_score_adj_start", "priority_after",
                               "memlock_limit"}
    seen = outcomes(await run(battery, "python", RESOURCES, timeout=20), names)
    assert seen["memlock_limit"] != "OK:unlimited", seen
    refused = set(RESOURCE_CHECKS)
    # nproc is the task limit under runsc only (backend.user_task_limit); under runc it is
    # unlimited, bounded by the pids cgroup.
    if RUNSC:
        refused.add("raise_hard_nproc")
    else:
        assert seen["raise_hard_nproc"] in ("OK:unlimited", "EPERM"), seen
    if RUNSC:
        # RUNSC: gVisor 20221219 lets a process without CAP_SYS_NICE lower its nice value
        # and without CAP_SYS_RESOURCE lower its oom_score_adj below 0 (-1000), in its own
        # kernel only. Harmless, checked from the host: both values live in the Sentry's
        # task table, which neither schedules (the Go runtime does, every host thread of
        # runsc-sandbox stays at nice 0) nor picks OOM victims (the host kernel does, and
        # the runsc-sandbox process keeps the engine's oom_score_adj of 500). gVisor's
        # /proc shows 0 as the start value, not the engine's 500. The agent's own value
        # (PID 1, non-dumpable) stays out of reach, as under runc.
        for lenient in ("nice_-5", "oom_score_adj_lower", "oom_score_adj_-1000"):
            assert seen[lenient] in ("OK", "EACCES", "EPERM"), seen
            refused.discard(lenient)
    assert_refused(seen, refused, "resource capability")
    if not RUNSC:
        assert seen["priority_after"] == "OK:(0,0)", seen  # nice 0, SCHED_OTHER
    else:
        assert seen["priority_after"] in ("OK:(0,0)", "OK:(-5,0)"), seen


# --------------------------------------------------------------------------- system

SYSTEM = PRELUDE + r"""
# CAP_SYS_ADMIN, denied by the seccomp profile as well.
check("sethostname", lambda: sc(170, buf(b"evil"), 4))
check("setdomainname", lambda: sc(171, buf(b"evil"), 4))
open("/tmp/caps_swap", "w").close()
check("swapon", lambda: sc(167, buf(b"/tmp/caps_swap"), 0))
check("swapoff", lambda: sc(168, buf(b"/tmp/caps_swap")))
check("pivot_root", lambda: sc(155, buf(b"/tmp"), buf(b"/tmp")))
check("quotactl", lambda: sc(179, 0, 0, 0, 0))
check("fanotify_init", lambda: sc(300, 0, 0))
check("open_by_handle_at", lambda: sc(304, -100, 0, 0))
check("name_to_handle_at", lambda: sc(303, -100, buf(b"/tmp"), buf(b"\0" * 136), buf(b"\0" * 4), 0))
for flag, ns in ((0x40000000, "net"), (0x04000000, "uts"), (0x08000000, "ipc"),
                 (0x20000000, "pid"), (0x02000000, "cgroup")):
    check("unshare_" + ns, lambda flag=flag: sc(272, flag))
check("setns_own_net_fd", lambda: sc(308, os.open("/proc/self/ns/net", os.O_RDONLY), 0))
check("request_key", lambda: sc(249, buf(b"user"), buf(b"k"), 0, 0))
check("personality_read_implies_exec", lambda: sc(135, 0x0400000))
check("personality_uname26", lambda: sc(135, 0x0020000))
# CAP_SYS_PACCT, CAP_SYS_TTY_CONFIG, CAP_SYS_TIME, CAP_WAKE_ALARM
check("acct", lambda: sc(163, buf(b"/tmp/caps_swap")))
check("vhangup", lambda: sc(153))
check("settimeofday", lambda: sc(164, buf(struct.pack("qq", 0, 0)), 0))
timex = b"\x01\0\0\0" + b"\0" * 204  # ADJ_OFFSET: a write
check("adjtimex_write", lambda: sc(159, buf(timex)))
check("clock_adjtime_write", lambda: sc(305, 0, buf(timex)))
check("timerfd_realtime_alarm", lambda: os.close(sc(283, 8, 0)))
check("timer_create_boottime_alarm", lambda: sc(222, 9, 0, buf(b"\0" * 8)))
# CAP_SYS_PTRACE, denied by the seccomp profile as well.
iov = buf(b"\0" * 16)
check("process_vm_readv_pid1", lambda: sc(310, 1, iov, 1, iov, 1, 0))
check("process_vm_writev_pid1", lambda: sc(311, 1, iov, 1, iov, 1, 0))
check("kcmp_pid1", lambda: sc(312, 1, os.getpid(), 0, 0, 0))
check("pidfd_getfd_pid1", lambda: sc(438, sc(434, 1, 0), 0, 0))
# CAP_SYSLOG, CAP_SYS_RAWIO
check("proc_kmsg", lambda: open("/proc/kmsg", "rb").close())
check("dev_kmsg", lambda: open("/dev/kmsg", "rb").close())
check("syslog_read_all", lambda: sc(103, 3, buf(b"\0" * 4096), 4096))
check("syslog_size", lambda: sc(103, 10, 0, 0))
check("dev_mem", lambda: open("/dev/mem", "rb").close())
check("dev_port", lambda: open("/dev/port", "rb").close())
check("iopl", lambda: sc(172, 3))
check("ioperm", lambda: sc(173, 0x80, 1, 1))
# Kernel knobs (CAP_SYS_ADMIN, CAP_NET_ADMIN, ...) through /proc/sys and /sys.
for path, value in (("/proc/sys/kernel/hostname", "evil"), ("/proc/sys/kernel/domainname", "evil"),
                    ("/proc/sys/vm/drop_caches", "3"), ("/proc/sys/net/ipv4/ip_forward", "1"),
                    ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
                    ("/proc/sys/kernel/core_pattern", "|/tmp/x"),
                    ("/proc/sys/fs/pipe-max-size", "1073741824"),
                    ("/sys/class/net/lo/mtu", "1280"), ("/sys/kernel/uevent_helper", "/tmp/x")):
    check("write_" + path, lambda path=path, value=value: write(path, value))
check("hostname_after", lambda: socket.gethostname() != "evil")
"""

SYSTEM_CHECKS = {
    "sethostname", "setdomainname", "swapon", "swapoff", "pivot_root", "quotactl",
    "fanotify_init", "open_by_handle_at", "name_to_handle_at", "unshare_net", "unshare_uts",
    "unshare_ipc", "unshare_pid", "unshare_cgroup", "setns_own_net_fd", "request_key",
    "personality_read_implies_exec", "personality_uname26", "acct", "vhangup",
    "settimeofday", "adjtimex_write", "clock_adjtime_write", "timerfd_realtime_alarm",
    "timer_create_boottime_alarm", "process_vm_readv_pid1", "process_vm_writev_pid1",
    "kcmp_pid1", "pidfd_getfd_pid1", "proc_kmsg", "dev_kmsg", "syslog_read_all",
    "syslog_size", "dev_mem", "dev_port", "iopl", "ioperm",
    "write_/proc/sys/kernel/hostname", "write_/proc/sys/kernel/domainname",
    "write_/proc/sys/vm/drop_caches", "write_/proc/sys/net/ipv4/ip_forward",
    "write_/proc/sys/net/ipv4/ping_group_range", "write_/proc/sys/kernel/core_pattern",
    "write_/proc/sys/fs/pipe-max-size", "write_/sys/class/net/lo/mtu",
    "write_/sys/kernel/uevent_helper",
}


async def test_system_administration_is_refused(battery: Service) -> None:
    """CAP_SYS_ADMIN, CAP_SYS_TIME, CAP_WAKE_ALARM, CAP_SYS_PTRACE, CAP_SYSLOG,
    CAP_SYS_RAWIO, CAP_SYS_PACCT, CAP_SYS_TTY_CONFIG and the kernel's knobs."""
    seen = outcomes(await run(battery, "python", SYSTEM, timeout=20),
                    SYSTEM_CHECKS | {"hostname_after"})
    assert_refused(seen, SYSTEM_CHECKS, "system capability")
    assert seen["hostname_after"] == "OK:True", seen

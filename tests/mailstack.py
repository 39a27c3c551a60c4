"""A private Postfix and Dovecot on 127.0.0.1 high ports in a temp folder: real bounces for tests.

Postfix accepts mail by SMTP for two test domains and nothing else:

* dead.test: every address there is unknown. Postfix accepts the recipient at RCPT time, its
  virtual(8) delivery agent fails it ("unknown user", 5.1.1) and bounce(8) sends an RFC 3464
  multipart/report DSN to the envelope sender.
* news.test: handed to Dovecot over LMTP. Dovecot strips the `+detail` (recipient_delimiter)
  to find the user, so `bounces+TOKEN@news.test` is stored in user `bounces`'s INBOX, and its
  Delivered-To header keeps the full address, TOKEN included.

With `running_mailstack(newsletter_pipe=True)`, `bounces@news.test` and every
`bounces+TOKEN@news.test` go instead to a pipe(8) service running `newsletter --config
<pipe_config> bounces ingest -`, set up as docs/bounces.md "## Postfix" says (transport_maps
entry, recipient_delimiter, master.cf service with flags=DOR); the rest of news.test still goes
to Dovecot. The command runs as `pipe_user` (pipe(8) refuses root): a test writes its config at
`pipe_config` and keeps its SQLite database in `pipe_database(name)`, which that user can write.

Anything else fails at once (default_transport is error(8)): no mail leaves the machine and no
DNS is asked. Both servers run as root from configuration written here at start, with their own
queue, state, sockets and logs under one temp folder, so a system Postfix or Dovecot on the same
machine is neither needed nor disturbed.

Use it from a test module:

    from tests.mailstack import MailStack, running_mailstack

    @pytest.fixture(scope="module")
    def mailstack() -> Iterator[MailStack]:
        yield from running_mailstack()

(a test module importing the ready-made `mailstack` fixture below trips ruff's F811; a
conftest.py can import it: `from tests.mailstack import mailstack  # noqa: F401`). A test
using it skips with a one-line reason where the stack cannot run: not root, a package missing,
a server that will not start.

The stack: smtp_host/smtp_port (Postfix), imap_host/imap_port, user/password (Dovecot),
address("TOKEN") -> "bounces+TOKEN@news.test", wait_for_messages(n, deadline) -> the INBOX's
raw messages, messages(), clear_inbox(), maildir, log() (both servers' logs), processes(),
wait_for_log(*texts, deadline), queue() (`postqueue -p`), flush() (`postqueue -f`); with the pipe:
pipe_user, pipe_argv, pipe_config, pipe_database(name), pipe_note.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST = "127.0.0.1"
BOUNCE_DOMAIN = "dead.test"  # every recipient here bounces: 5.1.1 unknown user
LIST_DOMAIN = "news.test"  # delivered to Dovecot; the user is the part before "+"
USER = "bounces"

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTMAP = "/usr/sbin/postmap"
POSTQUEUE = "/usr/sbin/postqueue"
POSTFIX_DAEMONS = "/usr/lib/postfix/sbin"
DOVECOT = "/usr/sbin/dovecot"
DOVECOT_LIBEXEC = "/usr/lib/dovecot"
_PACKAGES = "apt-get install postfix dovecot-imapd dovecot-lmtpd"
_POLL = 0.05  # seconds between two looks inside a deadline loop
_START_DEADLINE = 20.0
PIPE_SERVICE = "newsletter-bounces"  # the master.cf service name docs/bounces.md uses
PIPE_USER = "nobody"  # pipe(8) runs no command as root or as the mail system owner

# main.cf, written at start. {placeholders} come from MailStack.
_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/postfix/queue
data_directory = {root}/postfix/data
mail_spool_directory = {root}/postfix/spool
daemon_directory = {daemons}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-mailstack
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}

myhostname = mx.{bounce_domain}
mydomain = {bounce_domain}
myorigin = $myhostname
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
recipient_delimiter = +

# No local(8) domain: "nobody", "root" and the like exist in /etc/passwd, so local(8) would
# deliver them. virtual(8) with an empty mailbox map knows nobody, and says so with 5.1.1
# after the message was accepted (an empty map also means no check at RCPT time).
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
virtual_mailbox_domains = {bounce_domain}
virtual_mailbox_maps =
virtual_mailbox_base = {root}/postfix/vmail
smtpd_reject_unlisted_recipient = no

# The list domain goes to Dovecot; nothing goes anywhere else.
relay_domains = {list_domain}
transport_maps = {transport_maps}
default_transport = error:5.7.1 this test mail stack delivers to {bounce_domain} or {list_domain}
relay_transport = $default_transport
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# One recipient per LMTP transaction: Dovecot writes Delivered-To only when there is one.
lmtp_destination_recipient_limit = 1

# Seconds, not minutes: retry soon, give up soon, no delay warnings, no postmaster copies.
in_flow_delay = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maximal_queue_lifetime = 2m
bounce_queue_lifetime = 2m
delay_warning_time = 0
notify_classes =
biff = no
{pipe_main_cf}"""

# With newsletter_pipe: docs/bounces.md's lines, this stack's paths and names filled in.
# The transport table (hash:, through postmap) sends bounces@ to the pipe, and with
# recipient_delimiter = + that entry matches every bounces+TOKEN@ too; the domain's other
# addresses still go to Dovecot.
_PIPE_TRANSPORT = """\
{user}@{list_domain}    {service}:
{list_domain}    lmtp:inet:{host}:{lmtp_port}
"""
_PIPE_MAIN_CF = """
# pipe(8) writes Delivered-To / X-Original-To (flags D, O) only one recipient at a time.
{service}_destination_recipient_limit = 1
"""
_PIPE_MASTER_CF = """\
{service} unix - n n - 10 pipe
  flags=DOR user={pipe_user} argv={argv}
"""

# master.cf, written at start: the stock services, none chrooted (no copies of /etc needed).
_MASTER_CF = """\
{host}:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_DOVECOT_CONF = """\
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
instance_name = dovecot-mailstack
protocols = imap lmtp
listen = {host}
hostname = mail.{list_domain}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
auth_verbose = yes

default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}

ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/dovecot/users
}}
userdb {{
  driver = passwd-file
  args = {root}/dovecot/users
}}
mail_location = maildir:{root}/mail/%n

# bounces+TOKEN@news.test is user "bounces"; the message goes to INBOX, not a TOKEN folder.
# Delivered-To: is the RCPT TO address, +TOKEN included ("final", the default, written out
# because it matters). Not "original": that is ORCPT only (no fallback in 2.3.19), Postfix
# sends ORCPT only to servers announcing DSN, and Dovecot's LMTP does not: no header at all.
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
lmtp_hdr_delivery_address = final

service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
}}
"""


def _free_ports(n: int) -> list[int]:
    """`n` different ports free on HOST right now (all held open at once: no duplicates)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(n)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _missing() -> str | None:
    """Why the stack cannot run here, in one line; None when it can."""
    if os.geteuid() != 0:
        return "mail stack: Postfix and Dovecot must be started as root"
    for path in (POSTFIX, POSTCONF, f"{POSTFIX_DAEMONS}/master", f"{POSTFIX_DAEMONS}/postlogd",
                 DOVECOT, f"{DOVECOT_LIBEXEC}/imap", f"{DOVECOT_LIBEXEC}/lmtp"):
        if not os.access(path, os.X_OK):
            return f"mail stack: {path} is not installed ({_PACKAGES})"
    for user in ("postfix", "dovecot", "dovenull", "mail"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"mail stack: no system user {user!r} ({_PACKAGES} creates it)"
    try:
        grp.getgrnam("postdrop")
    except KeyError:
        return f"mail stack: no system group 'postdrop' ({_PACKAGES} creates it)"
    return None


def _run(log: Path, *argv: str, timeout: float = 30.0) -> None:
    """Run a command, its output appended to `log` (a file: the daemons it starts keep their
    copy of stdout open, so a pipe would never end); RuntimeError with that output on failure."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        start = out.tell()
        try:
            subprocess.run(argv, check=True, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        except (subprocess.SubprocessError, OSError) as exc:
            out.flush()
            with log.open() as back:
                back.seek(start)
                said = " ".join(back.read().split())
            if isinstance(exc, subprocess.CalledProcessError):
                said = f"exit status {exc.returncode}. {said}"
            raise RuntimeError(f"{Path(argv[0]).name} {argv[-1]}: {said or exc}") from exc


def _cannot_run(user: str, argv: list[str]) -> str | None:
    """Why `user` cannot run `argv` (one line), or None when it exits 0."""
    pw = pwd.getpwnam(user)
    try:
        done = subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                              cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).decode(errors="replace").split())
        return f"exit status {done.returncode}: {said[-300:]}"
    return None


def _shim_venv(folder: Path, python: str, script: Path) -> Path:
    """A venv at `folder` on interpreter `python` whose site-packages is this venv's (a
    symlink), with a copy of `script` (a console script) starting it; the copy's path."""
    site = Path(sysconfig.get_path("purelib"))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (folder / "bin").mkdir(parents=True)
    (folder / "lib" / version).mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text(f"home = {Path(python).parent}\n"
                                       f"include-system-site-packages = false\n")
    (folder / "bin" / "python").symlink_to(python)
    (folder / "lib" / version / "site-packages").symlink_to(site)
    body = script.read_text().partition("\n")[2]
    shim = folder / "bin" / script.name
    shim.write_text(f"#!{folder / 'bin' / 'python'}\n{body}")
    shim.chmod(0o755)
    return shim


def _newsletter_for(user: str, root: Path) -> tuple[Path, str]:
    """The `newsletter` console script `user` can run, and a note when it is not this venv's
    own: (script, note). RuntimeError when there is none.

    This venv's script is the first choice (sys.executable's sibling). Its interpreter is a
    symlink (`uv venv`, pyenv) that may lead into a folder only its owner can enter, e.g.
    /root/.pyenv: then the same scripts and packages are run by an interpreter of the same
    version that `user` can reach, from a venv made under `root`.
    """
    script = Path(sys.executable).with_name("newsletter")
    if not script.is_file():
        raise RuntimeError(f"no newsletter script beside {sys.executable} (uv sync)")
    why = _cannot_run(user, [str(script), "--help"])
    if why is None:
        return script, ""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.access(python, os.X_OK):
            continue
        shim = _shim_venv(root / "venv", python, script)
        if _cannot_run(user, [str(shim), "--help"]) is None:
            return shim, (f"{user} cannot run {script} ({why}): ran the same package with "
                          f"{python} from {shim}")
        shutil.rmtree(root / "venv")
    raise RuntimeError(f"pipe user {user} cannot run {script} ({why}) and there is no "
                       f"{version} it can run in /usr/bin or /usr/local/bin")


def _session_members(sid: int) -> list[int]:
    """Processes in session `sid`: a master and every child it started (both daemons setsid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp session
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class MailStack:
    """A running Postfix (SMTP in) and Dovecot (LMTP from Postfix, IMAP out) in `root`."""

    root: Path
    smtp_port: int
    imap_port: int
    lmtp_port: int
    smtp_host: str = HOST
    imap_host: str = HOST
    user: str = USER
    password: str = field(default_factory=lambda: os.urandom(9).hex())
    bounce_domain: str = BOUNCE_DOMAIN
    list_domain: str = LIST_DOMAIN
    newsletter_pipe: bool = False  # bounces@list_domain through pipe(8), see the docstring
    pipe_user: str = PIPE_USER
    pipe_argv: list[str] = field(default_factory=list)  # the command pipe(8) runs (at start)
    pipe_note: str = ""  # how the command was made runnable by pipe_user, if not as it is
    _masters: list[int] = field(default_factory=list)  # each leads a session: its children

    @property
    def postfix_dir(self) -> Path:
        """The Postfix configuration directory (`postfix -c`)."""
        return self.root / "postfix" / "etc"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    @property
    def _commands(self) -> Path:
        return self.root / "commands.log"

    @property
    def maildir(self) -> Path:
        """`user`'s Maildir (cur/, new/, tmp/ appear with the first delivery)."""
        return self.root / "mail" / self.user

    @property
    def pipe_dir(self) -> Path:
        """The pipe command's folder: pipe_config, and the pipe_database() folders."""
        return self.root / "pipe"

    @property
    def pipe_config(self) -> Path:
        """The `--config` file the pipe command reads, each time it runs: a test writes it
        (it must be readable by pipe_user)."""
        return self.pipe_dir / "newsletter.toml"

    def pipe_database(self, name: str) -> str:
        """An SQLite URL in a new folder `name` under pipe_dir that pipe_user owns, the
        (empty) database file too: SQLite as root gives the -wal and -shm files it creates the
        database file's owner, so both the test and the pipe command can write it."""
        pw = pwd.getpwnam(self.pipe_user)
        folder = self.pipe_dir / name
        folder.mkdir()
        path = folder / "n.db"
        path.touch(0o600)
        for each in (folder, path):
            os.chown(each, pw.pw_uid, pw.pw_gid)
        return f"sqlite:///{path}"

    def address(self, detail: str = "") -> str:
        """`bounces+detail@news.test` (or `bounces@news.test`): mail to it lands in the INBOX."""
        return f"{self.user}{'+' + detail if detail else ''}@{self.list_domain}"

    def log(self) -> str:
        """Both servers' logs, for a failing test to print."""
        parts = []
        for name in ("commands.log", "postfix.log", "dovecot.log"):
            path = self.root / name
            text = path.read_text(errors="replace") if path.exists() else "(no log)\n"
            parts.append(f"----- {name} -----\n{text}")
        return "".join(parts)

    def processes(self) -> list[int]:
        """The live processes of both servers (masters and their children)."""
        return [pid for master in self._masters for pid in _session_members(master)]

    def _last_line(self, log: str, marks: tuple[str, ...]) -> str:
        path = self.root / log
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return next((line for line in reversed(lines) if any(m in line for m in marks)), "")

    def wait_for_log(self, *texts: str, deadline: float = 30.0) -> list[str]:
        """Postfix's log lines holding every one of `texts`, once there is one, polling for up
        to `deadline` seconds; AssertionError with both servers' logs when none comes."""
        path = self.root / "postfix.log"
        end = time.monotonic() + deadline
        while True:
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            found = [line for line in lines if all(text in line for text in texts)]
            if found:
                return found
            if time.monotonic() >= end:
                raise AssertionError(f"no Postfix log line with {texts!r} after {deadline:g} s"
                                     f"\n{self.log()}")
            time.sleep(_POLL)

    def queue(self) -> str:
        """`postqueue -p`: the messages Postfix still holds, with why each waits."""
        done = subprocess.run([POSTQUEUE, "-c", str(self.postfix_dir), "-p"], check=True,
                              capture_output=True, text=True, timeout=30)
        return done.stdout

    def flush(self) -> None:
        """`postqueue -f`: try every deferred message again now."""
        _run(self._commands, POSTQUEUE, "-c", str(self.postfix_dir), "-f")

    # --- IMAP -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def imap(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in IMAP connection with INBOX selected."""
        conn = imaplib.IMAP4(self.imap_host, self.imap_port, timeout=10)
        try:
            conn.login(self.user, self.password)
            conn.select("INBOX")
            yield conn
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.logout()

    def messages(self) -> list[bytes]:
        """Every message in the INBOX, oldest first, as stored (Dovecot's headers on top)."""
        with self.imap() as conn:
            return self._fetch_all(conn)

    @staticmethod
    def _fetch_all(conn: imaplib.IMAP4) -> list[bytes]:
        _, data = conn.search(None, "ALL")
        found: list[bytes] = []
        for num in data[0].split():
            _, parts = conn.fetch(num, "(BODY.PEEK[])")
            found.extend(part[1] for part in parts if isinstance(part, tuple))
        return found

    def wait_for_messages(self, n: int, deadline: float = 60.0) -> list[bytes]:
        """The INBOX's messages once there are at least `n`, polling IMAP for up to `deadline`
        seconds; AssertionError with both servers' logs when they do not come."""
        end = time.monotonic() + deadline
        with self.imap() as conn:
            while True:
                conn.noop()  # Dovecot looks at the Maildir again
                _, data = conn.search(None, "ALL")
                count = len(data[0].split())
                if count >= n:
                    return self._fetch_all(conn)
                if time.monotonic() >= end:
                    raise AssertionError(
                        f"{count} message(s) in {self.user}'s INBOX after {deadline:g} s, "
                        f"expected {n}\n{self.log()}")
                time.sleep(_POLL)

    def clear_inbox(self) -> None:
        """Delete every message in the INBOX (for tests that share one stack)."""
        with self.imap() as conn:
            _, data = conn.search(None, "ALL")
            if data[0].split():
                conn.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
                conn.expunge()

    # --- start and stop ---------------------------------------------------------------------

    def _write_config(self) -> None:
        mail = pwd.getpwnam("mail")
        values: dict[str, object] = {
            "root": self.root, "host": HOST, "smtp_port": self.smtp_port,
            "imap_port": self.imap_port, "lmtp_port": self.lmtp_port,
            "bounce_domain": self.bounce_domain, "list_domain": self.list_domain,
            "daemons": POSTFIX_DAEMONS, "uid": mail.pw_uid, "gid": mail.pw_gid,
            "user": self.user, "service": PIPE_SERVICE, "pipe_user": self.pipe_user,
            "transport_maps": f"inline:{{ {self.list_domain}=lmtp:inet:{HOST}:"
                              f"{self.lmtp_port} }}",
            "pipe_main_cf": ""}
        self.root.chmod(0o755)  # unprivileged daemons reach their files through it
        for sub in ("postfix/etc", "postfix/queue", "postfix/vmail", "postfix/spool",
                    "dovecot/run", "dovecot/state", "mail", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        master_cf = _MASTER_CF
        if self.newsletter_pipe:
            self.pipe_dir.mkdir(mode=0o755)
            script, self.pipe_note = _newsletter_for(self.pipe_user, self.root)
            self.pipe_argv = [str(script), "--config", str(self.pipe_config),
                              "bounces", "ingest", "-"]
            table = self.postfix_dir / "transport"
            table.write_text(_PIPE_TRANSPORT.format(**values))
            values.update(transport_maps=f"hash:{table}", argv=" ".join(self.pipe_argv),
                          pipe_main_cf=_PIPE_MAIN_CF.format(**values))
            master_cf += _PIPE_MASTER_CF.format(**values)
        past = time.time() - 60  # Postfix waits (seconds) for a main.cf changed just now
        for name, text in (("main.cf", _MAIN_CF), ("master.cf", master_cf)):
            (self.postfix_dir / name).write_text(text.format(**values))
            os.utime(self.postfix_dir / name, (past, past))
        self.dovecot_conf.write_text(_DOVECOT_CONF.format(**values))
        home = self.root / "home" / self.user
        home.mkdir()
        users = self.root / "dovecot" / "users"
        users.write_text(f"{self.user}:{{PLAIN}}{self.password}:{mail.pw_uid}:{mail.pw_gid}"
                         f"::{home}::\n")
        os.chown(users, 0, grp.getgrnam("dovecot").gr_gid)  # read by auth, run as dovecot
        users.chmod(0o640)
        for path in (self.root / "mail", home):
            os.chown(path, mail.pw_uid, mail.pw_gid)

    def _wait_listening(self, port: int, what: str) -> None:
        end = time.monotonic() + _START_DEADLINE
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    return
            except OSError as exc:
                if time.monotonic() >= end:
                    raise RuntimeError(f"{what} is not listening on {HOST}:{port}: {exc}") from exc
            time.sleep(_POLL)

    def _wait_master(self, pidfile: Path, what: str) -> int:
        """The master's pid, once it wrote its pid file (a daemon writes it after forking)."""
        end = time.monotonic() + _START_DEADLINE
        while (pid := _read_pid(pidfile)) is None:
            if time.monotonic() >= end:
                raise RuntimeError(f"{what} wrote no {pidfile}")
            time.sleep(_POLL)
        self._masters.append(pid)
        return pid

    @property
    def _postfix_pidfile(self) -> Path:
        return self.root / "postfix" / "queue" / "pid" / "master.pid"

    @property
    def _dovecot_pidfile(self) -> Path:
        return self.root / "dovecot" / "run" / "master.pid"

    def start(self) -> None:
        """Write the configuration and start Dovecot, then Postfix; RuntimeError when either
        does not come up (stop() still cleans up what did)."""
        if self.newsletter_pipe:
            for path in (f"{POSTFIX_DAEMONS}/pipe", POSTMAP, POSTQUEUE):
                if not os.access(path, os.X_OK):
                    raise RuntimeError(f"{path} is not installed ({_PACKAGES})")
            try:
                pwd.getpwnam(self.pipe_user)
            except KeyError:
                raise RuntimeError(f"no user {self.pipe_user!r} to run the pipe command") from None
        self._write_config()
        _run(self._commands, DOVECOT, "-c", str(self.dovecot_conf))
        self._wait_master(self._dovecot_pidfile, "Dovecot")
        self._wait_listening(self.imap_port, "Dovecot IMAP")
        self._wait_listening(self.lmtp_port, "Dovecot LMTP")
        if self.newsletter_pipe:
            _run(self._commands, POSTMAP, "-c", str(self.postfix_dir),
                 f"hash:{self.postfix_dir / 'transport'}")
        # `start` runs post-install create-missing: the queue tree, owned as it must be.
        try:
            _run(self._commands, POSTFIX, "-c", str(self.postfix_dir), "start")
        except RuntimeError as exc:  # Postfix says why in its log rather than on stdout
            said = self._last_line("postfix.log", ("fatal:", "error:", "warning:"))
            raise RuntimeError(f"{exc} {said}") from exc
        self._wait_master(self._postfix_pidfile, "Postfix")
        self._wait_listening(self.smtp_port, "Postfix SMTP")

    def stop(self) -> None:
        """Stop both servers and wait until none of their processes is left."""
        for pidfile in (self._postfix_pidfile, self._dovecot_pidfile):
            pid = _read_pid(pidfile)  # a master that started but was not waited for
            if pid is not None and pid not in self._masters and _session_members(pid):
                self._masters.append(pid)
        if self._postfix_pidfile.exists():
            with contextlib.suppress(RuntimeError):
                _run(self._commands, POSTFIX, "-c", str(self.postfix_dir), "stop")
        for pid in self._masters:  # Dovecot (and Postfix, had `stop` failed): what
            if _session_members(pid):  # `dovecot stop` does, minus its one-second polling
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 10
        while left := self.processes():
            if time.monotonic() >= end:  # a straggler: the processes this stack started
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(_POLL)


def running_mailstack(*, newsletter_pipe: bool = False) -> Generator[MailStack, None, None]:
    """Start a stack in a new temp folder, yield it, stop it and remove the folder; skip the
    test (one line: why) where it cannot run. For a fixture: `yield from running_mailstack()`.
    newsletter_pipe: bounces@news.test goes to `newsletter bounces ingest -` (see the module)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # Not pytest's tmp_path: Unix socket paths must stay short (108 bytes).
    smtp_port, imap_port, lmtp_port = _free_ports(3)
    stack = MailStack(Path(tempfile.mkdtemp(prefix="mailstack-", dir="/tmp")),
                      smtp_port=smtp_port, imap_port=imap_port, lmtp_port=lmtp_port,
                      newsletter_pipe=newsletter_pipe)
    try:
        try:
            stack.start()
        except RuntimeError as exc:
            pytest.skip(f"mail stack: {exc}"[:400])
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(stack.root, ignore_errors=True)


@pytest.fixture(scope="module")
def mailstack() -> Iterator[MailStack]:
    """A running MailStack for the test module; see running_mailstack()."""
    yield from running_mailstack()

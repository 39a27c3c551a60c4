"""What the delivery benchmarks share: smtp-sink, process CPU, the seed, a DKIM key and the
config."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from newsletter.store import schema as s  # noqa: E402
from newsletter.store.database import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = ROOT / "examples" / "articles"
SENDER = "news@meridian.example.org"
CLK = os.sysconf("SC_CLK_TCK")


def tool(name: str) -> str:
    """A Postfix test program (smtp-sink, smtp-source), or exit saying how to get it."""
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.access(path, os.X_OK):
        sys.exit(f"{name} not found: apt-get install postfix")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


@dataclass(frozen=True)
class Sink:
    pid: int
    port: int


@contextlib.contextmanager
def smtp_sink() -> Iterator[Sink]:
    """Postfix's smtp-sink on a free loopback port: answers 250 to everything, as fast as it
    can, so the sending side is what is measured. A Postfix daemon the package started is
    stopped first so it cannot compete for the CPU."""
    postfix = shutil.which("postfix") or "/usr/sbin/postfix"
    if (os.geteuid() == 0 and os.access(postfix, os.X_OK)
            and subprocess.run([postfix, "status"], capture_output=True).returncode == 0):
        subprocess.run([postfix, "stop"], capture_output=True)
    port = free_port()
    cmd = [tool("smtp-sink")]
    if os.geteuid() == 0:  # smtp-sink wants a user to drop to when started as root
        try:
            cmd += ["-u", pwd.getpwnam("postfix").pw_name]
        except KeyError:
            cmd += ["-u", "nobody"]
    cmd += [f"127.0.0.1:{port}", "256"]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"smtp-sink did not start: {cmd}")
            time.sleep(0.05)
        yield Sink(proc.pid, port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_SEED_COLUMNS = ("INSERT INTO subscribers (email, email_key, name, status, sections, "
                 "hard_bounces, created_at, updated_at) ")
_SEED_SQLITE = sa.text(_SEED_COLUMNS + """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
SELECT 'reader' || i || '@example.com', 'reader' || i || '@example.com', 'Reader ' || i,
       'active', '[]', 0, :now, :now FROM n
""").bindparams(sa.bindparam("now", type_=s.UTCDateTime()))
_SEED_PG = sa.text(_SEED_COLUMNS + """
SELECT 'reader' || i || '@example.com', 'reader' || i || '@example.com', 'Reader ' || i,
       'active', '[]', 0, :now, :now FROM generate_series(1, :count) AS i
""").bindparams(sa.bindparam("now", type_=s.UTCDateTime()))


def seed(store: Store, count: int) -> float:
    """`count` active subscribers in one set-based INSERT … SELECT; returns seconds."""
    stmt = _SEED_PG if store.engine.dialect.name == "postgresql" else _SEED_SQLITE
    start = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(stmt, {"count": count, "now": datetime.now(UTC)})
    return time.perf_counter() - start


def write_dkim_key(folder: Path) -> Path:
    """A fresh rsa-2048 key, PKCS#8 PEM, written to `folder`/dkim.pem (returned)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def write_config(folder: Path, database_url: str, port: int, *, concurrency: int,
                 batch_size: int, dkim_key: Path | None, workers: int = 1,
                 articles: Path = ARTICLES, max_articles: int = 30) -> Path:
    """A config sending the example articles (or `articles`) by SMTP to 127.0.0.1:`port`."""
    folder.mkdir(parents=True, exist_ok=True)
    dkim = (f'dkim_key_path = "{dkim_key}"\ndkim_selector = "bench"\n'
            f'dkim_domain = "meridian.example.org"\n') if dkim_key else ""
    path = folder / "n.toml"
    path.write_text(f"""
[publication]
name = "Meridian Policy Review"
base_url = "https://meridian.example.org/"
postal_address = "1 Harbour Street, Lisbon"
[storage]
database_url = "{database_url}"
[feeds]
output_dir = "{folder / 'feeds'}"
[[sources]]
type = "folder"
path = "{articles}"
[newsletter]
lookback_days = 36500
max_articles = {max_articles}
[secrets]
secret_key = "bench-secret-key-bench-secret-key"
[mail]
transport = "smtp"
from_address = "{SENDER}"
reply_to = "editor@meridian.example.org"
{dkim}
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout = 30
concurrency = {concurrency}
[delivery]
batch_size = {batch_size}
workers = {workers}
""", encoding="utf-8")
    return path

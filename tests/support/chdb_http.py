"""TEST SUPPORT ONLY: a stand-in for a ClickHouse server, not product code.

No ClickHouse server can run in this environment (no Docker; Debian ships a 2018 build
without DateTime64 or TTL; no wheel ships a server binary). chDB *is* the ClickHouse engine,
in-process. This module is a thin shim that speaks the subset of ClickHouse's HTTP interface
that clickhouse-connect uses and runs every statement on one chDB session, so
``ServerStore`` (clickhouse-connect over HTTP) can be tested end to end against the real
engine. SQL semantics, types, errors and formats are ClickHouse's own; only the HTTP framing
below is ours:

* ``GET /ping`` answers ``Ok.``;
* the statement is the ``query`` URL parameter followed by the body (ClickHouse's rule);
* ``database`` selects the current database; ``param_<name>`` are query parameters; other
  URL parameters that are not transport parameters are applied as settings for that one
  statement (``SET``, then reset to ``DEFAULT``), e.g. ``insert_deduplication_token``;
* ``INSERT ... FORMAT Arrow|ArrowStream|Parquet`` bodies are read with pyarrow and inserted
  through chDB's ``Python()`` table function; text formats are passed inline to chDB;
  ``Native`` inserts are not supported (clickhouse-connect's ``insert()``; use
  ``insert_arrow``);
* results come back in the query's ``FORMAT`` (clickhouse-connect always names one) or
  ``default_format`` / TabSeparated; responses are never compressed (clients honour the
  absent ``Content-Encoding``); gzip/deflate request bodies are accepted;
* an error is HTTP 500 with ``X-ClickHouse-Exception-Code`` and ClickHouse's own text
  (``Code: N. DB::Exception: ...``), which clickhouse-connect parses.

One chDB session serves all HTTP sessions (``session_id`` is accepted and ignored), one
statement at a time. Run it as a separate process so it owns its data path and the calling
process keeps its own chDB session::

    python tests/support/chdb_http.py --path /tmp/ch --port 0   # prints "LISTENING <port>"

``ChdbHttpServer`` starts and stops it from tests.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# URL parameters that steer the HTTP layer rather than the statement.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "wait_end_of_query",
        "compress",
        "decompress",
        "buffer_size",
        "client_protocol_version",
        "user",
        "password",
        "quota_key",
        "role",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
    }
)

_INSERT_RE = re.compile(
    rb"^\s*INSERT\s+INTO\s+(?P<target>.+?)(?:\s+SETTINGS\s+(?P<settings>.+?))?\s+FORMAT\s+(?P<fmt>\w+)[ \t]*\r?\n?",
    re.IGNORECASE | re.DOTALL,
)
_TARGET_RE = re.compile(r"^(?P<table>[^(]+?)\s*(?:\((?P<cols>.*)\))?\s*$", re.DOTALL)
_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_CODE_RE = re.compile(r"Code:\s*(\d+)")
_ARROW_FORMATS = frozenset({"arrow", "arrowstream", "parquet"})


class ShimError(Exception):
    """A request the shim cannot serve; reported like a ClickHouse exception."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"Code: {code}. DB::Exception: {text}")
        self.code = code


class Engine:
    """One chDB session; executes one HTTP request's statement at a time."""

    def __init__(self, path: str) -> None:
        from chdb import session as chdb_session

        self._session: Any = chdb_session.Session(path)
        self._lock = threading.Lock()
        self.version = self._session.query("SELECT version()", "TabSeparated").bytes().decode().strip()
        self.timezone = self._session.query("SELECT timezone()", "TabSeparated").bytes().decode().strip()

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def run(self, params: dict[str, str], body: bytes) -> tuple[bytes, str | None]:
        """Execute the request's statement; returns (output, output format or None)."""
        statement = params.get("query", "").encode()
        if statement and body:
            statement += b"\n" + body
        elif body:
            statement = body
        if not statement.strip():
            raise ShimError(62, "Empty query. (SYNTAX_ERROR)")
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        query_params = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        with self._lock:
            self._session.query(f"USE `{params.get('database') or 'default'}`")
            insert = _INSERT_RE.match(statement)
            if insert and insert.group("settings"):
                settings.update(_parse_settings(insert.group("settings").decode()))
            self._apply(settings)
            try:
                if insert:
                    self._insert(insert, statement[insert.end() :])
                    return b"", None
                sql = statement.decode()
                fmt_match = _FORMAT_RE.search(sql)
                fmt = fmt_match.group(1) if fmt_match else params.get("default_format", "TabSeparated")
                result = self._session.query(sql, fmt, params=query_params or None)
                return (result.bytes() if result is not None else b""), (fmt if _produces_rows(sql) else None)
            finally:
                self._reset(settings)

    def _apply(self, settings: dict[str, str]) -> None:
        for name, value in settings.items():
            self._session.query(f"SET `{name}` = {_literal(value)}")

    def _reset(self, settings: dict[str, str]) -> None:
        for name in settings:
            with contextlib.suppress(Exception):
                self._session.query(f"SET `{name}` = DEFAULT")

    def _insert(self, match: re.Match[bytes], data: bytes) -> None:
        target = _TARGET_RE.match(match.group("target").decode().strip())
        if target is None:
            raise ShimError(62, f"cannot parse insert target {match.group('target')!r}. (SYNTAX_ERROR)")
        table, cols = target.group("table").strip(), target.group("cols")
        col_list = f" ({cols})" if cols else ""
        fmt = match.group("fmt").decode()
        if fmt.lower() not in _ARROW_FORMATS:
            if fmt.lower() in ("native", "rowbinary", "rowbinarywithnamesandtypes"):
                raise ShimError(
                    73, f"the chDB HTTP test shim cannot insert binary format {fmt}; use Arrow. (UNKNOWN_FORMAT)"
                )
            self._session.query(f"INSERT INTO {table}{col_list} FORMAT {fmt}\n{data.decode()}")
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if fmt.lower() == "parquet":
            table_data = pq.read_table(io.BytesIO(data))
        elif fmt.lower() == "arrow":
            table_data = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        else:
            table_data = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        if table_data.num_rows == 0:
            return
        # chDB's Python() table function resolves the name in this frame's locals.
        mp_http_batch = table_data  # noqa: F841
        select_list = cols if cols else "*"
        self._session.query(f"INSERT INTO {table}{col_list} SELECT {select_list} FROM Python(mp_http_batch)")


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parse_settings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def _produces_rows(sql: str) -> bool:
    head = re.sub(r"^(\s|--[^\n]*\n|/\*.*?\*/)*", "", sql, flags=re.DOTALL).split(None, 1)
    return bool(head) and head[0].upper() in {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "("}


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ShimError(
        73, f"the chDB HTTP test shim does not decode Content-Encoding {encoding}; disable client compression"
    )


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes
        server_version = "chdb-http-shim"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            self._serve(raw)

        def _serve(self, raw: bytes) -> None:
            url = urlsplit(self.path)
            if url.path.rstrip("/") in ("/ping", "/replicas_status"):
                self._reply(200, b"Ok.\n", {})
                return
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            query_id = params.get("query_id") or str(uuid.uuid4())
            headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": engine.timezone}
            try:
                body = _decode_body(raw, self.headers.get("Content-Encoding"))
                out, fmt = engine.run(params, body)
            except Exception as exc:  # every engine error goes back to the client as ClickHouse text
                text = str(exc).strip()
                match = _CODE_RE.search(text)
                code = match.group(1) if match else "1001"
                if not match:
                    text = f"Code: 1001. DB::Exception: {type(exc).__name__}: {text}. (STD_EXCEPTION)"
                headers["X-ClickHouse-Exception-Code"] = code
                self._reply(500, f"{text} (version {engine.version})\n".encode(), headers)
                return
            if fmt:
                headers["X-ClickHouse-Format"] = fmt
            headers["X-ClickHouse-Summary"] = json.dumps({"read_rows": "0", "written_rows": "0"})
            self._reply(200, out, headers)

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def serve(path: str, port: int) -> None:
    engine = Engine(path)
    httpd = ThreadingHTTPServer(("127.0.0.1", port), make_handler(engine))
    httpd.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    sys.stdout.write(f"LISTENING {httpd.server_address[1]}\n")
    sys.stdout.flush()
    try:
        httpd.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        engine.close()


class ChdbHttpServer:
    """Runs this module as a subprocess on a free 127.0.0.1 port with its own chDB data path."""

    def __init__(self, path: str | Path, startup_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def log_path(self) -> Path:
        return self.path.with_name(self.path.name + ".shim.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChdbHttpServer:
        self.path.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--path", str(self.path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            poller = select.poll()  # not select(): the suite's process may hold > 1024 descriptors
            poller.register(self._proc.stdout, select.POLLIN)
            if not poller.poll(max(remaining, 0) * 1000):
                self.kill()
                raise TimeoutError(f"chDB HTTP shim did not start within {self.startup_timeout_s:.0f} s")
            chunk = os.read(self._proc.stdout.fileno(), 256)
            if not chunk:
                raise RuntimeError(f"chDB HTTP shim exited with {self._proc.wait()}; see {self.log_path}")
            line += chunk
        self.port = int(line.split()[1])
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=timeout_s)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self.stop()

    def __enter__(self) -> ChdbHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="chDB behind a ClickHouse-compatible HTTP interface (tests only)")
    parser.add_argument("--path", required=True, help="chDB data path")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    serve(args.path, args.port)


if __name__ == "__main__":
    main()

"""Access to a real `clickwatch up`: a token from a file, /login bounded and throttled, errors shown under --quiet."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.rig import CLICKWATCH, clean_env, clickwatch_up, free_port, listening, stop_process, wait_until

pytestmark = pytest.mark.integration

TOKEN = "file-token-4d1c9e"
HUGE = 300 * 1024 * 1024
# What serving and refusing one oversized POST may add to the processes' memory; reading it whole added 600+ MB.
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


def _tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += parents.get(current, [])
    return tree


def _rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes."""
    total = 0
    for member in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _stream(port: int, head: bytes, chunked: bool, answers: list[bytes]) -> None:
    """POST /login with a body of HUGE bytes, sent as fast as the server takes it; keep what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        chunk = b"a" * (1024 * 1024)
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
        sent = 0
        try:
            while sent < HUGE:
                sock.sendall(framed)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: what it was meant to do
        with contextlib.suppress(OSError):
            answers.append(sock.recv(4096))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mb_login_post_is_refused_without_growing_the_process(tmp_path: Path, chunked: bool) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with clickwatch_up(tmp_path, "--token-file", str(token_file)) as up:
        time.sleep(1.0)  # let start-up allocations settle before the baseline
        baseline = _rss(up.process.pid)
        length = b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {HUGE}\r\n".encode()
        head = (
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n" + length + b"\r\n"
        )
        answers: list[bytes] = []
        sender = threading.Thread(target=_stream, args=(up.dashboard_port, head, chunked, answers), daemon=True)
        sender.start()
        peak = baseline
        while sender.is_alive():
            peak = max(peak, _rss(up.process.pid))
            sender.join(0.05)
        assert answers and answers[0].startswith(b"HTTP/1.1 413"), answers
        assert peak - baseline < RSS_GROWTH_LIMIT, f"grew {(peak - baseline) / 2**20:.0f} MB"
        print(f"\n300 MB POST /login ({'chunked' if chunked else 'declared'}): grew {(peak - baseline) / 2**20:.1f} MB")

        # The token came from the file: the dashboard wants it, and takes it.
        with httpx.Client(base_url=up.dashboard_url, timeout=10, trust_env=False) as api:
            assert api.get("/api/summary").status_code == 401
            assert api.get("/api/summary", headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (200, 503)
        assert TOKEN not in up.log()


def test_login_throttled_token_flag_warned_and_token_file_used_by_check(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with clickwatch_up(tmp_path, "--token-file", str(token_file)) as up:
        url = up.dashboard_url
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
            answers = [client.post("/login", data={"token": f"guess{n}"}).status_code for n in range(6)]
            assert answers == [401] * 5 + [429]
            throttled = client.post("/login", data={"token": TOKEN})
            assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0

        def check(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(CLICKWATCH), "check", "--url", url, *args], capture_output=True, text=True, timeout=60
            )

        by_file = check("--token-file", str(token_file))
        assert "401" not in by_file.stdout + by_file.stderr and "warning" not in by_file.stderr
        flagged = check("--token", TOKEN)
        assert "--token is visible to every user of this machine" in flagged.stderr
        assert "401" not in flagged.stdout + flagged.stderr
        missing = check("--token-file", str(tmp_path / "nope"))
        assert missing.returncode == 2 and "No such file" in missing.stderr


def test_quiet_hides_the_progress_line_but_not_a_store_process_crash(tmp_path: Path) -> None:
    with clickwatch_up(tmp_path) as up:
        with up.client(timeout=10) as client:
            # Refused by the closed port: a failed delivery, enough to start the store process.
            client.post(f"http://127.0.0.1:{free_port()}/edge/clickstreamEvents", json={"productSku": "1"})

            def store_process() -> int | None:
                for pid in _tree(up.process.pid)[1:]:
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as handle:
                        if b"clickwatch.store.worker" in handle.read():
                            return pid
                return None

            worker = wait_until(store_process, 20, "the store process")
            os.kill(worker, signal.SIGKILL)
            client.post(f"http://127.0.0.1:{free_port()}/edge/clickstreamEvents", json={"productSku": "2"})
            wait_until(lambda: "store process ended unexpectedly" in up.log(), 20, "the crash in the output")
        time.sleep(2.5)  # longer than one progress period: --quiet must have kept the progress line out
        assert "delivered," not in up.log()


def _guesses(url: str, count: int, forwarded: Callable[[int], str | None]) -> list[int]:
    """`count` wrong bearer tokens, the n-th sent with X-Forwarded-For `forwarded(n)` (None: without one)."""
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        answers = []
        for n in range(count):
            headers = {"Authorization": f"Bearer guess{n}"}
            if (address := forwarded(n)) is not None:
                headers["X-Forwarded-For"] = address
            answers.append(client.get("/api/summary", headers=headers).status_code)
        return answers


def _rotating(n: int) -> str:
    return f"198.51.{n // 250}.{n % 250 + 1}"


@contextlib.contextmanager
def _dashboard_alone(tmp_path: Path, **env: str) -> Iterator[str]:
    """`python -m clickwatch.dashboard` with a token, configured by its environment; its URL while it serves."""
    port = free_port()
    environment = clean_env({"CLICKWATCH_DB": str(tmp_path / "cw.db"), "CLICKWATCH_TOKEN": TOKEN, **env})
    environment["CLICKWATCH_DASHBOARD_PORT"] = str(port)
    with (tmp_path / "dashboard.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "clickwatch.dashboard"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, 30, "the dashboard to listen")
        assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.mark.parametrize("served", ["clickwatch up", "python -m clickwatch.dashboard"])
def test_a_new_x_forwarded_for_per_guess_does_not_escape_the_throttle(tmp_path: Path, served: str) -> None:
    # uvicorn's default trusts X-Forwarded-For from loopback, where every request came from: 300 of 300 compared.
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with contextlib.ExitStack() as stack:
        if served == "clickwatch up":
            url = stack.enter_context(clickwatch_up(tmp_path, "--token-file", str(token_file))).dashboard_url
        else:
            url = stack.enter_context(_dashboard_alone(tmp_path))
        answers = _guesses(url, 300, _rotating)
    assert answers[:5] == [401] * 5
    assert set(answers[5:]) == {429}, f"{answers.count(401)} of 300 guesses compared"


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_one_counted(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    args = ("--token-file", str(token_file), "--forwarded-allow-ips", "127.0.0.1")
    with clickwatch_up(tmp_path, *args) as up:
        url = up.dashboard_url
        # One shopper behind the proxy guesses: it waits ...
        assert _guesses(url, 6, lambda n: "203.0.113.7") == [401] * 5 + [429]
        # ... while another client of the same proxy, and the proxy's own address, still have all their tries.
        assert _guesses(url, 5, lambda n: "203.0.113.8") == [401] * 5
        assert _guesses(url, 1, lambda n: None) == [401]
        # A client cannot hide behind a forged first hop: the proxy appends the address it saw, and that counts.
        assert _guesses(url, 3, lambda n: f"{_rotating(n)}, 203.0.113.7") == [429] * 3
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
            right = client.get("/api/summary", headers={"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "x"})
            assert right.status_code in (200, 503)


def test_a_forwarded_allow_ips_that_is_no_address_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(CLICKWATCH), "up", "--db", str(tmp_path / "cw.db"), "--forwarded-allow-ips", "proxy.internal"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "clickwatch: --forwarded-allow-ips: expected IP addresses or networks such as 10.0.0.0/8, "
        "'proxy.internal' is neither"
    )

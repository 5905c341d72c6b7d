"""The web dashboard's cost to the fleet and its speed at scale, each against a baseline in the same run.

Run: `python -m bench.web [-n N] [--jobs 100000]`.

1. Claim round trip (a simulated agent claiming and handing back, as bench/claim_rtt.py) with no dashboard open,
   then with 20 signed-in dashboards following a running job's live output (a simulated agent printing 20 lines
   every 50 ms into that job's log topic, which the coordinator accepts and fans out to every stream), then with none
   again; the ratio is against both halves of the no-dashboard figure.
2. Time to first byte and to the whole page of the jobs page (`/jobs`, the first 50 rows, newest first, with the count
   of matching jobs) on a coordinator holding `--jobs` jobs, against the same page with 1,000 jobs in the same run, and
   against the first 50 rows of the same listing asked over the bus (`FleetClient.job_listing`).
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.claim_rtt import time_claims
from bench.common import (
    OPERATOR_TOKEN,
    CoordinatorProc,
    Row,
    SimAgent,
    jobs_manifest,
    median,
    ms,
    new_prefix,
    p99,
    verdict,
)
from mqfleet.local.broker import LocalBroker
from mqfleet.wire.topics import Topics, encode

DASHBOARDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    page = client.get("/signin")
    token = page.text.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]
    if client.post("/signin", data={"token": OPERATOR_TOKEN, "_csrf_token": token}).status_code != 303:
        raise RuntimeError("bench sign-in refused")
    return client


class Follower(threading.Thread):
    """One open dashboard: a signed-in event stream of one job, counting the output lines it receives."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.client = signed_in(url)
        self.job_id = job_id
        self.lines = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with self.client.stream("GET", f"/live?view=job&job={self.job_id}", timeout=None) as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    self.ready.set()
                elif line.startswith("data: ") and event == "lines":
                    self.lines += len(json.loads(line[6:]).get("lines", []))
                if self.stop.is_set():
                    return


def claims_with_dashboards(n: int, workdir: Path) -> dict[str, Any]:
    with LocalBroker(workdir / "broker") as broker:
        prefix, port = new_prefix("web"), free_port()
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(200),
                                extra=("--web-port", str(port)))
        url = f"http://127.0.0.1:{port}"
        claimer, printer = SimAgent(broker.url, prefix, "claim-host"), SimAgent(broker.url, prefix, "print-host")
        followers: list[Follower] = []
        stop_printing = threading.Event()
        try:
            claimer.start()
            printer.start()
            held = printer.claim_until_granted()  # the job whose output the dashboards follow, held all along
            job_id, attempt = held["job"]["id"], held["attempt"]
            none_before = time_claims(claimer, n // 2)
            followers = [Follower(url, job_id) for _ in range(DASHBOARDS)]
            for f in followers:
                f.start()
            for f in followers:
                if not f.ready.wait(30):
                    raise RuntimeError("a dashboard stream did not open")
            topic = Topics(prefix).log("print-host", job_id)

            def print_lines() -> None:
                seq = 0
                while not stop_printing.wait(0.05):
                    lines = [f"step {seq + i} loss {1 / (seq + i + 1):.5f} {uuid.uuid4().hex}" for i in range(20)]
                    seq += 20
                    printer.conn.publish(topic, encode({"job_id": job_id, "attempt": attempt, "lines": lines}), qos=0)

            printing = threading.Thread(target=print_lines, daemon=True)
            printing.start()
            time.sleep(1.0)
            with_dashboards = time_claims(claimer, n)
            stop_printing.set()
            printing.join(5)
            received = [f.lines for f in followers]
            for f in followers:
                f.stop.set()
                f.client.close()
            none_after = time_claims(claimer, n - n // 2)
        finally:
            stop_printing.set()
            claimer.stop()
            printer.stop()
            coord.stop()
    none = none_before + none_after
    return {"n": n, "dashboards": DASHBOARDS, "none_p50_s": median(none), "none_p99_s": p99(none),
            "dashboards_p50_s": median(with_dashboards), "dashboards_p99_s": p99(with_dashboards),
            "p50_ratio": median(with_dashboards) / median(none), "p99_ratio": p99(with_dashboards) / p99(none),
            "lines_received_min": min(received), "lines_received_max": max(received)}


def time_page(url: str, path: str, rounds: int = 7) -> tuple[float, float]:
    """Median seconds to the first byte and to the whole page, over `rounds` fresh connections."""
    first, whole = [], []
    for _ in range(rounds):
        with httpx.Client(base_url=url, timeout=60) as client:
            started = time.perf_counter()
            with client.stream("GET", path) as response:
                chunks = response.iter_bytes()
                next(chunks)
                first.append(time.perf_counter() - started)
                for _ in chunks:
                    pass
                whole.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code}")
    return median(first), median(whole)


def jobs_page_at(n_jobs: int, workdir: Path) -> dict[str, Any]:
    with LocalBroker(workdir / "broker") as broker:
        prefix, port = new_prefix("webjobs"), free_port()
        coord = CoordinatorProc(workdir / "coord", broker.url, prefix, jobs_manifest(n_jobs), wait_s=600,
                                extra=("--web-port", str(port)))
        url = f"http://127.0.0.1:{port}"
        try:
            # as a fleet is between loads: the first load's events and states all published (bench/job_count.py)
            settle_deadline = time.monotonic() + 900
            while coord.client.health().republishing and time.monotonic() < settle_deadline:
                time.sleep(1.0)
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/fleet", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
            first_s, whole_s = time_page(url, "/jobs")
            filtered_first_s, filtered_whole_s = time_page(url, "/jobs?status=pending&name=job-9*")
            bus = []
            for _ in range(7):
                started = time.perf_counter()
                rows = list(coord.client.job_listing(newest_first=True, limit=50))
                bus.append(time.perf_counter() - started)
                if len(rows) != 50:
                    raise RuntimeError(f"the bus listing gave {len(rows)} rows")
        finally:
            coord.stop()
    return {"jobs": n_jobs, "first_byte_s": first_s, "page_s": whole_s, "filtered_first_byte_s": filtered_first_s,
            "filtered_page_s": filtered_whole_s, "bus_first_50_s": median(bus)}


def measure_web(n: int, n_jobs: int, workdir: Path) -> dict[str, Any]:
    return {"claims": claims_with_dashboards(n, workdir / "claims"),
            "jobs_page_small": jobs_page_at(1000, workdir / "small"),
            "jobs_page": jobs_page_at(n_jobs, workdir / "large")}


def web_rows(r: dict[str, Any]) -> list[Row]:
    c, small, large = r["claims"], r["jobs_page_small"], r["jobs_page"]
    n = f"{large['jobs']:,}"
    return [
        Row(f"claim round trip with {c['dashboards']} signed-in dashboards following a job's live output",
            ms(c["dashboards_p50_s"]), ms(c["dashboards_p99_s"]),
            f"no dashboard {ms(c['none_p50_s'])} / {ms(c['none_p99_s'])}",
            f"{c['p50_ratio']:.2f}x / {c['p99_ratio']:.2f}x", "p50 <= 1.2x none", verdict(c["p50_ratio"] <= 1.2)),
        Row("output lines each dashboard received while the claims were timed (fewest)", f"{c['lines_received_min']}",
            baseline=f"most {c['lines_received_max']}"),
        Row(f"jobs page at {n} jobs (the 50 newest and their count), whole page", ms(large["page_s"]),
            baseline=f"1,000 jobs: {ms(small['page_s'])}", ratio=f"{large['page_s'] / small['page_s']:.2f}x",
            target="<= 1 s", verdict=verdict(large["page_s"] <= 1.0)),
        Row(f"jobs page at {n} jobs filtered (`status=pending&name=job-9*`), whole page", ms(large["filtered_page_s"]),
            baseline=f"1,000 jobs: {ms(small['filtered_page_s'])}",
            ratio=f"{large['filtered_page_s'] / small['filtered_page_s']:.2f}x"),
        Row(f"the same 50 rows over the bus (`FleetClient.job_listing`) at {n} jobs", ms(large["bus_first_50_s"]),
            baseline=f"jobs page {ms(large['page_s'])}", ratio=f"{large['page_s'] / large['bus_first_50_s']:.2f}x"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=400, help="claims to time with and without dashboards")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs the coordinator holds for the jobs page")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        print(json.dumps(measure_web(args.n, args.jobs, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

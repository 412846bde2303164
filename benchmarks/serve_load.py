"""`mmgen serve` under load (issue #29): concurrent clients on 127.0.0.1, every request answered or refused busy.

Trains the FlowMatching Shapes recipe (`configs/flow/shapes.yaml`, the flow checkpoint of the README) for a
few steps, or takes `--ckpt`; starts `mmgen serve` on it in its own process (one torch thread) for each
`--queue_size`; then `--clients` threads send `--requests` text->image clicks in all, each as the browser
sends one (Gradio's queue: join, then the session's event stream), a client sending its next request when
its last one is answered or refused. Per phase it counts answered, refused busy (HTTP 503) and lost (neither:
must be 0), the latency of the answered ones (join to completion: p50, p99), answered requests per second,
and the server's resident memory (VmRSS, /proc) after one warm-up request, every 0.2 s during the run, and
after it. Writes benchmarks/results/serve_load.json with the command.

    .venv/bin/python benchmarks/serve_load.py [--ckpt CKPT] [--clients 10] [--requests 100] [--queue_size 16 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "flow" / "shapes.yaml"
CAPTIONS = ["a red circle on the left moving up", "a large blue square at the top moving down",
            "a small green triangle on the right moving left", "a yellow circle at the bottom moving right"]


def train_checkpoint(folder: Path, steps: int) -> Path:
    """The flow recipe after ``steps`` steps (its networks and sampling defaults; the weights barely trained:
    serving costs the same)."""
    command = [sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", str(RECIPE),
               "--trainer.max_steps", str(steps), "--trainer.max_time", "null", "--trainer.logger", "false",
               "--trainer.enable_progress_bar", "false", "--data.init_args.train_size", "512"]
    subprocess.run(command, cwd=folder, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return folder / "runs" / "flow_shapes" / "checkpoints" / "last.ckpt"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Page:
    """The served page as a browser sees it: its text->image handler and Gradio's queue protocol."""

    def __init__(self, url: str) -> None:
        self.url = url
        config = httpx.get(f"{url}/config", timeout=60).json()
        galleries = {c["id"] for c in config["components"]
                     if str(c.get("props", {}).get("elem_id", "")).endswith("-text-to-image-gallery")}
        found = [(index, d) for index, d in enumerate(config["dependencies"]) if galleries & set(d["outputs"])]
        if not found:
            raise RuntimeError(f"{url} has no text->image tab")
        self.fn_index, handler = found[0]
        self.knobs = len(handler["inputs"]) - 3  # caption, number of samples, seed, then the family's knobs

    def click(self, client: httpx.Client, caption: str, num_samples: int, seed: int) -> tuple[str, float]:
        """One Generate click: ``("answered" | "busy" | "error: ...", seconds from join to the answer)``."""
        session = uuid.uuid4().hex
        start = time.perf_counter()
        joined = client.post("/gradio_api/queue/join", json={
            "data": [caption, num_samples, seed, *[None] * self.knobs], "fn_index": self.fn_index,
            "session_hash": session, "event_data": None, "trigger_id": None})
        if joined.status_code == 503:
            return "busy", time.perf_counter() - start
        joined.raise_for_status()
        with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message["msg"] == "process_completed":
                        outcome = "answered" if message.get("success") else f"error: {message.get('output')}"
                        return outcome, time.perf_counter() - start
        return "error: the event stream ended without an answer", time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def start_server(ckpt: Path, folder: Path, queue_size: int, tries: int = 3) -> tuple[subprocess.Popen, str]:
    """`mmgen serve` in its own process, once it has printed its address (it does after Gradio's start-up check
    of that address); started again when that check times out on a busy machine and the command exits."""
    for attempt in range(tries):
        port = free_port()
        command = [sys.executable, "-m", "mmgen_lightning.cli", "serve", "--ckpt", str(ckpt), "--port", str(port),
                   "--out", str(folder / f"out_{queue_size}"), "--queue_size", str(queue_size)]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={
            **os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(folder / "gradio")})
        lines = []
        for line in server.stdout:  # ends when the command exits
            lines.append(line)
            if line.startswith(f"mmgen serve: http://127.0.0.1:{port}"):
                threading.Thread(target=server.stdout.read, daemon=True).start()  # keep its pipe drained
                return server, f"http://127.0.0.1:{port}"
        server.wait()
        output = "".join(lines)
        if "did not answer" not in output or attempt == tries - 1:
            raise RuntimeError(f"mmgen serve did not start: {output[-2000:]}")
        print(f"mmgen serve's start-up check timed out (try {attempt + 1}); starting it again", flush=True)
    raise AssertionError("unreachable")


def phase(ckpt: Path, folder: Path, queue_size: int, clients: int, requests: int, num_samples: int) -> dict:
    """Start `mmgen serve`, load it, stop it; the counts, latencies and memory of one queue size."""
    server, url = start_server(ckpt, folder, queue_size)
    try:
        page = Page(url)
        with httpx.Client(base_url=url, timeout=600) as client:
            warm = page.click(client, CAPTIONS[0], num_samples, 0)
            if warm[0] != "answered":
                raise RuntimeError(f"the warm-up request was not answered: {warm}")
        rss_before = rss_mb(server.pid)

        results: list[tuple[str, float]] = []
        samples, done = [(0, rss_before)], threading.Event()  # (requests finished, MB)

        def sample_memory() -> None:
            while not done.wait(0.2):
                samples.append((len(results), rss_mb(server.pid)))

        taken = iter(range(requests))
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(base_url=url, timeout=600) as client:
                while True:
                    with lock:
                        number = next(taken, None)
                    if number is None:
                        return
                    result = page.click(client, CAPTIONS[number % len(CAPTIONS)], num_samples, number)
                    with lock:
                        results.append(result)

        sampler = threading.Thread(target=sample_memory)
        sampler.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    answered = [seconds for outcome, seconds in results if outcome == "answered"]
    busy = [seconds for outcome, seconds in results if outcome == "busy"]
    errors = [outcome for outcome, _ in results if outcome not in ("answered", "busy")]
    runs_written = len(list((folder / f"out_{queue_size}").glob("*-text-to-image/manifest.jsonl"))) - 1  # warm-up
    return {"queue_size": queue_size, "clients": clients, "requests": requests, "samples_per_request": num_samples,
            "answered": len(answered), "refused_busy": len(busy), "errors": errors,
            "lost": requests - len(results), "runs_written_by_the_server": runs_written,
            "latency_seconds": {"p50": round(percentile(answered, 0.5), 3), "p99": round(percentile(answered, 0.99), 3),
                                "max": round(max(answered), 3)} if answered else None,
            "busy_refusal_seconds_p50": round(statistics.median(busy), 4) if busy else None,
            "answered_per_second": round(len(answered) / wall, 2), "wall_seconds": round(wall, 1),
            "server_rss_mb": {"after_warm_up": round(rss_before, 1),
                              "peak_during": round(max(mb for _, mb in samples), 1),
                              "after": round(rss_after, 1), "growth": round(rss_after - rss_before, 1),
                              # the highest sample while at most 25, 50, 75, 100 % of the requests had finished
                              "peak_by_requests_finished": {str(quarter * requests // 4): round(
                                  max(mb for finished, mb in samples if finished <= quarter * requests // 4), 1)
                                  for quarter in (1, 2, 3, 4)}}}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a checkpoint with a text->image direction (default: train "
                                                     "the flow recipe for --train_steps)")
    parser.add_argument("--train_steps", type=int, default=30)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--queue_size", type=int, nargs="+", default=[16, 4])
    parser.add_argument("--num_samples", type=int, default=4, help="images per request (the page's default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    phases: list[dict] = []

    def write() -> None:  # after every phase, so a failing later phase keeps the earlier figures
        report = {
            "command": ".venv/bin/python benchmarks/serve_load.py " + shlex.join(sys.argv[1:]),
            "checkpoint": args.ckpt or f"configs/flow/shapes.yaml trained {args.train_steps} steps (train_size 512)",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, server "
                       f"OMP_NUM_THREADS=1, load average {load_at_start:.1f} at the start and "
                       f"{os.getloadavg()[0]:.1f} at the end",
            "what": "each request is one text->image click through Gradio's queue (join + event stream), "
                    f"{args.num_samples} images; latency: join to completion of the answered ones",
            "phases": phases,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = Path(args.ckpt) if args.ckpt else train_checkpoint(folder, args.train_steps)
        for size in args.queue_size:
            phases.append(phase(ckpt, folder, size, args.clients, args.requests, args.num_samples))
            write()
    for row in phases:
        print(f"queue {row['queue_size']:3d}: answered {row['answered']:3d}, busy {row['refused_busy']:3d}, "
              f"lost {row['lost']}, errors {len(row['errors'])}; p50 {row['latency_seconds']['p50']:.2f} s, "
              f"p99 {row['latency_seconds']['p99']:.2f} s, {row['answered_per_second']:.2f} answered/s; RSS "
              f"{row['server_rss_mb']['after_warm_up']:.0f} -> {row['server_rss_mb']['after']:.0f} MB "
              f"(peak {row['server_rss_mb']['peak_during']:.0f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The app under load: 20 submissions at once from concurrent logged-in clients against one queue.

Everything goes over loopback HTTP to a real ``threed app`` (gradio's own API routes, as a script or a
page would call them), and the test stops by itself: jobs are tiny (2 steps, a 24^3 GLB export), and
the CI variant cancels what is left once one job is done. What must hold:

* every submission is accepted or clearly refused (the queue is full, or the client's share is used);
* none is lost: each accepted one has its run folder and job file, a refused one leaves nothing;
* each accepted job finishes or is cancelled cleanly (no job fails, no process is left);
* the server keeps answering: a probe loads the page (``/`` and ``/config``) twice a second throughout.

The probe's latencies are printed (``-s``); docs/reliability.md quotes a measured run.
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest
from app_server import app_server, wait_for

from threed.app.jobs import QueueLimits
from threed.errors import ThreedError

USERS = [(f"user{i}", f"pass-{i}") for i in range(4)]
SUBMISSIONS = 20
"""Five clients per login, each submitting one job."""
PROMPTS = [f"a {c} {s}" for s in ("cube", "sphere", "cylinder", "cone", "torus")
           for c in ("red", "green", "blue", "yellow")]
TINY_JOB = "\n".join(["stages.0.val_every=0", "stages.0.ckpt_every=1", "export.grid_size=24", "export.video=false",
                      "export.views=0", "export.texture=vertex", "export.formats=[glb]"])
"""Overrides (the form's box) that keep a toy-world job to a few seconds of compute."""
REFUSED = ("the queue is full", "you already have")
TERMINAL = ("done", "cancelled", "failed")
PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 30.0
"""A probe that gets no answer in this long counts as a failure. The goal is a page load under 2 s (measured
and printed, not asserted); the bound is 15 times that because on a shared 2-core CI box a job's start
(importing torch) takes both cores for seconds, and a timing assert there would fail by chance."""


def call(http, api: str, data: list) -> tuple[str, list | None]:
    """One gradio API call (``/gradio_api/call/API``): its final event ("complete" or "error") and data."""
    response = http.post(f"/gradio_api/call/{api}", json={"data": data})
    response.raise_for_status()
    stream = http.get(f"/gradio_api/call/{api}/{response.json()['event_id']}").text
    event, payload = "", None
    for line in stream.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line[len("data: "):])
    return event, payload


def login(http, user: str, password: str) -> None:
    assert http.post("/login", data={"username": user, "password": password}).status_code == 200


class Probe(threading.Thread):
    """Loads the page twice a second until stopped; keeps every latency and counts the failures."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.latencies, self.failures, self.slow_at = url, threading.Event(), [], [], []

    def run(self):
        import httpx

        self.began = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=PROBE_TIMEOUT_S) as http:
            login(http, *USERS[0])
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    ok = http.get("/").status_code == 200 and http.get("/config").status_code == 200
                    took = time.monotonic() - start
                    (self.latencies if ok else self.failures).append(took)
                    if took >= 2.0:
                        self.slow_at.append(round(start - self.began))
                except Exception as exc:  # a timeout or a refused connection: the server did not answer
                    self.failures.append(repr(exc))
                self.stop.wait(PROBE_EVERY_S)

    def summary(self) -> str:
        lat = sorted(self.latencies)
        return (f"{len(lat)} page loads, {len(self.failures)} failures; median {statistics.median(lat):.3f} s, "
                f"95th percentile {lat[int(0.95 * (len(lat) - 1))]:.3f} s, max {lat[-1]:.3f} s, "
                f"{len(self.slow_at)} at 2 s or more (at {self.slow_at} s of {time.monotonic() - self.began:.0f} s)")


def submit_and_follow(url: str, i: int, start: threading.Barrier, results: dict, done: threading.Event) -> None:
    """One client: log in, submit at the same moment as the others, then follow the run as a page does."""
    import httpx

    user, password = USERS[i % len(USERS)]
    with httpx.Client(base_url=url, timeout=120) as http:
        login(http, user, password)
        start.wait()
        event, out = call(http, "generate", [PROMPTS[i], None, None, "quickstart", 2, None, None, None, TINY_JOB])
        if event != "complete":  # a server error: neither accepted nor refused, which the test reports
            results[i] = (user, None, f"{event}: {out}")
            return
        # Outputs: run (page state, not sent over the API), message, status, ..., the runs list (run chosen).
        name = None if out[1] else out[7]["value"]
        results[i] = (user, name, out[1])
        while name and not done.is_set():  # poll once a second, like the page's timer
            time.sleep(1.0)
            event, poll = call(http, "open_run", [name])
            if event != "complete" or poll[1]:
                results[i] += (f"following {name}: {event} {poll}",)
                break
            if any(w in poll[2] for w in ("**Done", "**Cancelled", "**Failed")):
                break


@pytest.mark.parametrize("variant", [
    pytest.param("ci", id="ci"),
    pytest.param("all-run", id="all-run", marks=pytest.mark.slow),
])
def test_twenty_concurrent_submissions_are_each_accepted_or_refused_and_none_is_lost(variant, tmp_path):
    pytest.importorskip("httpx")
    # ci: a short line, so most are refused; all-run: room for everyone, and every job runs to the end.
    limits = QueueLimits(waiting=5, per_client=2) if variant == "ci" else QueueLimits(waiting=SUBMISSIONS, per_client=5)
    root = tmp_path / "out"
    with app_server(root, auth=USERS, limits=limits) as (url, app):
        probe = Probe(url)
        probe.start()
        results: dict[int, tuple] = {}
        start, done = threading.Barrier(SUBMISSIONS), threading.Event()
        clients = [threading.Thread(target=submit_and_follow, args=(url, i, start, results, done), daemon=True)
                   for i in range(SUBMISSIONS)]
        for c in clients:
            c.start()
        try:
            wait_for(lambda: len(results) == SUBMISSIONS, 300, "every client's answer")
            accepted = {i: r[1] for i, r in results.items() if r[1]}
            refused = {i: r[2] for i, r in results.items() if not r[1]}
            assert all(any(w in m for w in REFUSED) for m in refused.values()), refused
            assert len(accepted) + len(refused) == SUBMISSIONS
            per_user = {u: sum(r[0] == u for i, r in results.items() if i in accepted) for u, _ in USERS}
            assert max(per_user.values()) <= limits.per_client, per_user
            if variant == "ci":
                assert refused and len(accepted) >= 2, results
            else:
                assert not refused, refused

            # None lost: exactly the accepted runs have folders, each with its job on record.
            names = set(accepted.values())
            assert {p.name for p in root.iterdir() if p.name != ".gradio"} == names
            assert all(app.queue.get(n) is not None and (root / n / "job.json").is_file() for n in names)

            first = app.queue.get(min(names, key=lambda n: app.queue.get(n).submitted)).run
            wait_for(lambda: app.queue.get(first).state in TERMINAL, 600, "the first job to end", every=1.0)
            if variant == "ci":
                for name in names:
                    try:
                        app.cancel(name)
                    except ThreedError:  # it ended in the meantime
                        assert app.queue.get(name).state in TERMINAL
            wait_for(lambda: all(app.queue.get(n).state in TERMINAL for n in names), 1800 if variant != "ci" else 300,
                     "every job to end", every=1.0)
        finally:
            done.set()
            probe.stop.set()
            probe.join(PROBE_TIMEOUT_S * 2)
            for c in clients:
                c.join(130)
        states = {n: app.queue.get(n).state for n in names}
        started = sum(app.queue.get(n).started is not None for n in names)
        print(f"\n[{variant}] {len(accepted)} accepted, {len(refused)} refused; states {sorted(states.values())} "
              f"({started} had started); page: {probe.summary()}")
        assert not [r[3:] for r in results.values() if r[3:]]  # following a run never failed either
        assert "failed" not in states.values(), {n: app.queue.get(n).message for n in names}
        assert states[first] == "done"
        if variant != "ci":
            assert set(states.values()) == {"done"}
        assert all((root / n / "export" / "model.glb").is_file() for n, s in states.items() if s == "done")
        assert not probe.failures, probe.failures  # the server answered every page load
        assert len(probe.latencies) >= 10  # and the probe ran throughout

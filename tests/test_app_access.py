"""Who gets in and how much they may queue: the app off the loopback, its login, and the queue's limits.

Nothing here binds anything but 127.0.0.1: a public host is refused before any socket is opened, and
the login is tried on a loopback server.
"""

from __future__ import annotations

import logging
import socket

import pytest
from app_server import app_server, free_port

from threed.app.access import is_loopback, logins, read_auth_file, resolve_access
from threed.app.jobs import JobQueue, QueueLimits
from threed.app.request import JobRequest
from threed.app.server import App
from threed.errors import ThreedError


@pytest.mark.parametrize("host,local", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
                                        ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
                                        ("192.168.1.20", False), ("myhost.example", False)])
def test_only_loopback_hosts_count_as_this_machine(host, local):
    assert is_loopback(host) is local


def test_a_public_host_needs_a_login_or_an_explicit_no_auth(caplog):
    with pytest.raises(ThreedError, match=r"--host 0.0.0.0 .* needs a login: add --auth USER:PASSWORD .* --no-auth"):
        resolve_access("0.0.0.0", None)
    assert resolve_access("127.0.0.1", None) is None
    assert resolve_access("0.0.0.0", [("ann", "pw")]) == [("ann", "pw")]
    with caplog.at_level(logging.WARNING, logger="threed.app.access"):
        assert resolve_access("0.0.0.0", None, no_auth=True) is None
    assert "WITHOUT A LOGIN" in caplog.text
    with pytest.raises(ThreedError, match="contradict"):
        resolve_access("0.0.0.0", [("ann", "pw")], no_auth=True)


def test_logins_are_user_colon_password(tmp_path):
    assert logins(["ann:a:b"]) == [("ann", "a:b")]  # the password may hold colons
    for bad in ("ann", "ann:", ":pw"):
        with pytest.raises(ThreedError, match="USER:PASSWORD with both parts non-empty"):
            logins([bad])
    with pytest.raises(ThreedError, match="names a user twice: ann"):
        logins(["ann:x", "ann:y"])
    file = tmp_path / "logins"
    file.write_text("# team\nann:secret one\n\nbob:two\n")
    assert read_auth_file(file) == ["ann:secret one", "bob:two"]
    assert logins(["cy:3"], file) == [("cy", "3"), ("ann", "secret one"), ("bob", "two")]
    with pytest.raises(ThreedError, match="cannot read --auth-file"):
        logins(None, tmp_path / "missing")


def test_cli_refuses_a_public_host_before_opening_a_port(capsys):
    pytest.importorskip("gradio")
    from threed.cli import main

    port = free_port()
    assert main(["app", "--host", "0.0.0.0", "--port", str(port), "--out", "unused"]) == 2
    assert "--auth USER:PASSWORD" in capsys.readouterr().err
    with socket.socket() as s:  # still free: nothing was bound
        s.bind(("0.0.0.0", port))


def test_each_client_gets_a_share_of_a_bounded_queue(tmp_path):
    queue = JobQueue(tmp_path, envs=[], limits=QueueLimits(waiting=3, per_client=2))  # no workers: jobs wait
    for run in ("a1", "a2", "b1"):
        (tmp_path / run).mkdir()
    queue.submit("a1", ["generate"], "user:ann")
    queue.submit("a2", ["generate"], "user:ann")
    with pytest.raises(ThreedError, match="you already have 2 jobs queued or running"):
        queue.submit("a3", ["generate"], "user:ann")
    queue.submit("b1", ["generate"], "user:bob")
    with pytest.raises(ThreedError, match=r"the queue is full \(3 jobs waiting"):
        queue.submit("b2", ["generate"], "user:bob")
    queue.cancel("a1")  # a place frees up, and ann's share with it
    queue.submit("a3", ["generate"], "user:ann")
    assert queue.get("a3").client == "user:ann" and queue.position("a3") == 3
    with pytest.raises(ThreedError, match="at least 1"):
        QueueLimits(waiting=0)


def test_a_refused_submission_leaves_nothing_behind(tmp_path):
    app = App(tmp_path, JobQueue(tmp_path, envs=[], limits=QueueLimits(waiting=1)))
    first = app.submit(JobRequest("a red cube"))
    with pytest.raises(ThreedError, match="the queue is full"):
        app.submit(JobRequest("a blue sphere"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [first]


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    """``threed app --auth ann:s3cret`` on a free loopback port: (url, App)."""
    with app_server(tmp_path_factory.mktemp("app-locked"), auth=[("ann", "s3cret")]) as (url, app):
        yield url, app


def test_with_a_login_every_route_refuses_strangers(locked_server):
    import httpx

    url, app = locked_server
    inside = app.root / "probe.txt"
    inside.write_text("inside")
    with httpx.Client(base_url=url, timeout=30) as stranger:
        assert stranger.get("/config").status_code == 401
        assert stranger.get("/gradio_api/info").status_code == 401
        assert stranger.get(f"/gradio_api/file={inside}").status_code == 401
        assert stranger.post("/gradio_api/call/generate", json={"data": ["a red cube"]}).status_code == 401
        assert stranger.post("/gradio_api/upload", files={"files": ("x.png", b"x")}).status_code == 401
        assert stranger.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
    with httpx.Client(base_url=url, timeout=30) as ann:
        assert ann.post("/login", data={"username": "ann", "password": "s3cret"}).status_code == 200
        assert ann.get("/config").status_code == 200
        assert ann.get(f"/gradio_api/file={inside}").text == "inside"

"""The web dashboard over HTTP against a real fleet (real broker, coordinator and agent): what anonymous viewers
may see, sign-in and CSRF, bad input, and the cap on open event streams (docs/SECURITY.md, "The web dashboard")."""

from __future__ import annotations

import subprocess
import sys

import httpx

from mqfleet.wire.topics import Topics, encode
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import OPERATOR_TOKEN
from tests.fixtures.web import HOSTILE_HTML, WebFleet, csrf_of

ROOT_CHECK = ("import sys, mqfleet.cli.roles, mqfleet.coordinator.service, mqfleet.client; "
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('litestar', 'uvicorn', 'plotly', 'jinja2') "
              "or m.startswith('mqfleet.web')); print(bad); sys.exit(1 if bad else 0)")


def test_the_coordinator_and_the_cli_never_import_the_web_stack_without_web_port() -> None:
    result = subprocess.run([sys.executable, "-c", ROOT_CHECK], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_anonymous_viewer_sees_public_state_but_no_output_spec_or_actions(web_fleet: WebFleet) -> None:
    web_fleet.start({"model": "talker", "name": "talky", "hyper": {"steps": 3, "interval_s": 0.1}})
    web_fleet.fleet.start_agent("host-a")
    (job,) = web_fleet.fleet.wait_for_status("completed")
    with web_fleet.client() as anon:
        page = anon.get(f"/jobs/{job['id']}")
        assert page.status_code == 200 and "talky" in page.text and "completed" in page.text
        assert 'id="output"' not in page.text and "talker step" not in page.text and '"hyper"' not in page.text
        assert 'id="output-hidden"' in page.text and 'id="cancel"' not in page.text
        assert anon.get(f"/jobs/{job['id']}/output").status_code == 403
        fleet_page = anon.get("/fleet")
        assert "host-a" in fleet_page.text and "Drain" not in fleet_page.text
        # an action: refused without the CSRF token, and refused with it for a viewer who is not signed in
        assert anon.post(f"/jobs/{job['id']}/requeue", data={}).status_code == 403
        token = csrf_of(anon, "/signin")
        assert anon.post(f"/jobs/{job['id']}/requeue", data={"_csrf_token": token}).status_code == 403
    assert web_fleet.fleet.client().job(job["id"]).status == "completed"
    with web_fleet.client() as operator:
        assert web_fleet.sign_in(operator).status_code == 303
        page = operator.get(f"/jobs/{job['id']}")
        assert 'id="output"' in page.text and "talker step 3 of 3" in page.text and '"hyper"' in page.text
        whole = operator.get(f"/jobs/{job['id']}/output")
        assert whole.headers["content-type"].startswith("text/plain") and "talker step 1 of 3" in whole.text


def test_sign_in_checks_the_token_limits_guesses_and_keeps_only_an_encrypted_httponly_strict_cookie(
        web_fleet: WebFleet) -> None:
    web_fleet.start()
    with web_fleet.client() as client:
        assert client.post("/signin", data={"token": OPERATOR_TOKEN}).status_code == 403  # no CSRF token
        assert web_fleet.sign_in(client, token="wrong").status_code == 401
        assert "mqfleet-session" not in client.cookies
        for _ in range(4):
            web_fleet.sign_in(client, token="wrong")
        assert web_fleet.sign_in(client).status_code == 429  # even the right token, for a minute
    # Behind a reverse proxy on this host each address has its own budget (X-Forwarded-For from loopback), and all
    # addresses together have one too, so no address-spoofing local process guesses faster than 30 a minute.
    for n in range(5):
        with web_fleet.client() as other:
            other.headers["x-forwarded-for"] = f"10.9.9.{n}"
            assert web_fleet.sign_in(other).status_code == 303
            for _ in range(5):
                assert web_fleet.sign_in(other, token="wrong").status_code == 401
    with web_fleet.client() as other:
        other.headers["x-forwarded-for"] = "10.9.9.99"
        assert web_fleet.sign_in(other).status_code == 429
    # the limiter is per address: a fresh coordinator to show a right token signs in
    web_fleet.fleet.coordinator.stop() if web_fleet.fleet.coordinator else None
    web_fleet.start()
    with web_fleet.client() as client:
        signed = web_fleet.sign_in(client)
        assert signed.status_code == 303
        cookie = next(h for h in signed.headers.get_list("set-cookie") if h.startswith("mqfleet-session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert OPERATOR_TOKEN not in cookie and OPERATOR_TOKEN.encode().hex() not in cookie
        assert ">operator<" in client.get("/fleet").text
        client.post("/signout", data={"_csrf_token": csrf_of(client, "/fleet")})
        assert ">operator<" not in client.get("/fleet").text


def test_bad_input_gets_400_or_404_naming_the_parameter_and_hostile_text_is_escaped(web_fleet: WebFleet,
                                                                                   mqtt_connect: object) -> None:
    web_fleet.start({"model": "talker", "name": "x" + HOSTILE_HTML.replace(" ", "_")[:60]})
    conn = mqtt_connect()  # type: ignore[operator]
    topics = Topics(web_fleet.fleet.prefix)
    conn.publish_wait(topics.advert("evil"), encode({"host": "evil", "os": HOSTILE_HTML, "slots": 1}), retain=True)
    with web_fleet.client() as client:
        for path, needle in (("/jobs?status=bogus", "status must be one of"), ("/jobs?after=12x", "after must be"),
                             ("/jobs?limit=0", "limit must be"), ("/jobs?order=sideways", "order must be"),
                             ("/jobs?name=" + "*" * 300, "name is a glob"), ("/live?view=nope", "view must be"),
                             ("/jobs/nosuchjob", "")):
            page = client.get(path)
            assert page.status_code == (404 if "nosuchjob" in path else 400), path
            assert needle in page.text, (path, page.text[:400])
        wait_until(lambda: "evil" in client.get("/fleet").text, timeout_s=15, what="the hostile advert on the fleet page")
        for path in ("/fleet", "/jobs"):
            text = client.get(path).text
            assert "<script>window" not in text and "<img src=x" not in text
            assert "&lt;script&gt;" in text or "&lt;img" in text


def test_open_event_streams_are_capped_and_a_refused_one_gets_503(web_fleet: WebFleet) -> None:
    web_fleet.start(extra=("--web-max-streams", "3"))
    with httpx.Client(base_url=web_fleet.url, timeout=10) as client:
        opened = [client.stream("GET", "/live?view=fleet") for _ in range(3)]
        responses = [s.__enter__() for s in opened]
        try:
            assert [r.status_code for r in responses] == [200, 200, 200]
            readers = [r.iter_lines() for r in responses]  # kept: a dropped reader closes its stream
            assert [next(lines) for lines in readers] == ["event: ready"] * 3
            refused = client.get("/live?view=fleet")
            assert refused.status_code == 503 and "most this dashboard serves" in refused.text
            assert client.get("/fleet").status_code == 200  # pages still work
        finally:
            for s in opened:
                s.__exit__(None, None, None)
        # a closed stream costs nothing: its place is free again
        def reopened() -> bool:
            with client.stream("GET", "/live?view=fleet") as again:
                return again.status_code == 200
        wait_until(reopened, timeout_s=10, what="a closed stream's place to be free")

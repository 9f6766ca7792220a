"""The board's request guard: DNS-rebinding Hosts and cross-site Origins get 403; ``--auth`` requires a login."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("gradio", reason="the board needs the optional 'board' extra (gradio)")

from lit_factory.board.guard import HostOriginGuard, is_loopback, parse_auth  # noqa: E402
from lit_factory.errors import LitFactoryError  # noqa: E402


@pytest.fixture
def client():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    app = Starlette(routes=[Route("/run", lambda request: PlainTextResponse("ran"), methods=["GET", "POST"])],
                    middleware=[Middleware(HostOriginGuard, allowed_hosts=["workstation"])])
    return TestClient(app)


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "localhost:7860", "[::1]:7860", "192.168.1.20:7860",
                                  "Workstation:7860"])
def test_the_boards_own_addresses_pass(client, host):
    response = client.post("/run", headers={"host": host, "origin": f"http://{host}"})
    assert (response.status_code, response.text) == (200, "ran")
    assert client.post("/run", headers={"host": host}).status_code == 200  # scripts send no Origin


@pytest.mark.parametrize("headers", [
    {"host": "evil.example:7860"},                                      # DNS rebinding: the attacker's name
    {"host": "evil.example:7860", "origin": "http://evil.example:7860"},
    {"host": "127.0.0.1:7860", "origin": "http://evil.example"},        # a cross-site POST from another page
    {"host": "127.0.0.1:7860", "origin": "null"},                       # a sandboxed frame or file:// page
    {"host": "localhost.evil.example"},
    {"host": ""},
])
def test_other_hosts_and_origins_are_refused(client, headers):
    response = client.post("/run", headers=headers)
    assert response.status_code == 403 and "refused" in response.text and response.text != "ran"


def test_auth_and_host_options():
    assert parse_auth("alice:s3:cret") == ("alice", "s3:cret")
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(LitFactoryError, match="--auth: expected USER:PASSWORD"):
            parse_auth(bad)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")


@pytest.mark.slow
def test_live_board_refuses_rebinding_and_requires_its_login(tmp_path):
    import httpx
    from gradio_client import Client

    from test_board_server import free_port, wait_for

    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "lit_factory", "board", "--port", str(port), "--workspace",
                                str(tmp_path), "--auth", "alice:s3cret"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers():
            try:
                return httpx.get(f"{url}/config", timeout=2).status_code
            except httpx.HTTPError:
                return None

        wait_for(answers, 120, "the board to start")
        assert httpx.get(f"{url}/config", headers={"host": f"evil.example:{port}"}).status_code == 403
        refused = httpx.post(f"{url}/gradio_api/queue/join", json={},
                             headers={"origin": "http://evil.example"})
        assert refused.status_code == 403
        assert httpx.get(f"{url}/config").status_code == 401  # not logged in
        logged_in = Client(url, auth=("alice", "s3cret"), verbose=False)
        values = logged_in.predict("quickstart.yaml", "en", api_name="/load_recipe")
        assert "lit_factory/assets/sparrow-tokenizer" in values
        with pytest.raises(Exception):
            Client(url, auth=("alice", "wrong"), verbose=False)
    finally:
        process.terminate()
        process.wait(60)

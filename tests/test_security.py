"""Security of the Label Studio backend: token routing, the outbound fetch policy (SSRF), errors
that do not map the network, and basic auth that fails closed.

Every server here listens on 127.0.0.1. "Public" destinations are simulated without sending a
packet anywhere else: either the policy function is fed resolved addresses directly, or a test
resolver maps a public-looking name to a loopback server that ``SQSAM_ALLOWED_HOSTS`` lets in by
name and port, which then redirects to another loopback port that nothing allows.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import subprocess
import sys

import pytest

pytest.importorskip("flask", reason="the label-studio extra (flask) is not installed")

from sqsam_label_studio.app import Settings, create_app  # noqa: E402
from sqsam_label_studio.errors import ConfigError, ImageFetchError  # noqa: E402
from sqsam_label_studio.images import ImageLoader, is_token_path  # noqa: E402
from sqsam_label_studio.netpolicy import FetchPolicy, is_public_address, parse_allowed_hosts  # noqa: E402
from tests.netfixtures import REPO, FaultServer, RecordingServer, closed_port  # noqa: E402
from tests.test_label_studio_backend import BRUSH, REFRESH, ComponentModel, predict_payload  # noqa: E402

TOKEN = "legacy-secret-token-42"


def app_client(loader, **settings):
    app = create_app(model=ComponentModel(), loader=loader, settings=Settings(**settings))
    app.testing = True
    return app.test_client()


def image_task(url: str, task_id: int = 1) -> dict:
    return {"id": task_id, "data": {"image": url}}


def predict(client, url: str, **kwargs):
    return client.post("/predict", json=predict_payload([image_task(url)]), **kwargs)


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and body.get("status") == status and body.get("error")
    return body["error"]


@pytest.fixture
def ls():
    with RecordingServer() as server:
        yield server


@pytest.fixture
def attacker():
    with RecordingServer() as server:
        yield server


# ---------------------------------------------------------------------------------------------
# Token routing
# ---------------------------------------------------------------------------------------------

FILE_PATHS = ["/data/upload/1/a.png", "/data/local-files/?d=img/a.png", "/storage-data/uploaded/?filepath=a.png",
              "/tasks/7/resolve/?fileuri=czM6Ly9i", "/projects/3/presign/?fileuri=czM6Ly9i"]
OTHER_PATHS = ["/api/projects/", "/api/current-user/whoami", "/static/a.png", "/data/upload/../../api/users/",
               "/data/upload/%2e%2e/%2e%2e/api/users/", "/data/upload/..%2f..%2fapi/users/", "/tasks/x/resolve/", "/a.png",
               "/data/uploadx/a.png", "/user/login/"]


@pytest.mark.parametrize("path", FILE_PATHS)
def test_token_reaches_label_studio_file_paths(ls, path):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
    assert predict(client, path).status_code == 200
    assert ls.hits[-1] == (path, f"Token {TOKEN}")


@pytest.mark.parametrize("path", OTHER_PATHS)
def test_token_never_reaches_other_label_studio_paths(ls, path):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
    predict(client, path)  # 200 (the test server serves anything) or 4xx: either way no token
    assert ls.hits and all(auth is None for _, auth in ls.hits), ls.hits


def test_token_path_rule_respects_a_base_path():
    base = "http://ls.example:8080/label-studio/"
    assert is_token_path("http://ls.example:8080/label-studio/data/upload/1/a.png", base)
    assert not is_token_path("http://ls.example:8080/data/upload/1/a.png", base)
    assert not is_token_path("https://ls.example:8080/label-studio/data/upload/1/a.png", base)  # other scheme
    assert not is_token_path("http://ls.example:8081/label-studio/data/upload/1/a.png", base)  # other port
    assert not is_token_path("http://ls.example.evil:8080/label-studio/data/upload/1/a.png", base)


def test_redirect_off_label_studio_drops_the_token(ls, attacker):
    ls.routes["/tasks/1/resolve/"] = ("redirect", f"{attacker.url}/bucket/a.png")
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN, allowed_hosts=attacker.url.split("//")[1]))
    assert predict(client, "/tasks/1/resolve/?fileuri=x").status_code == 200
    assert ls.hits[-1] == ("/tasks/1/resolve/?fileuri=x", f"Token {TOKEN}")
    assert attacker.hits == [("/bucket/a.png", None)]


def test_absolute_url_on_another_origin_gets_no_token(ls, attacker):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN, allowed_hosts=attacker.url.split("//")[1]))
    assert predict(client, f"{attacker.url}/data/upload/1/a.png").status_code == 200
    assert attacker.hits == [("/data/upload/1/a.png", None)]


def test_second_setup_cannot_move_the_token(ls, attacker, caplog):
    """LABEL_STUDIO_API_KEY set, LABEL_STUDIO_URL unset: the first /setup hostname is pinned."""
    client = app_client(ImageLoader(api_key=TOKEN))
    assert client.post("/setup", json={"project": "1.1", "schema": BRUSH, "hostname": ls.url}).status_code == 200
    with caplog.at_level(logging.WARNING):
        r = client.post("/setup", json={"project": "1.1", "schema": BRUSH, "hostname": attacker.url})
    assert "already" in error_of(r, 403)
    assert any("refused" in rec.getMessage() for rec in caplog.records)
    for path in ("/data/upload/1/a.png", "/tasks/1/resolve/?fileuri=x"):
        assert predict(client, path).status_code == 200
    assert attacker.hits == [] and attacker.posts == []
    assert all(auth == f"Token {TOKEN}" for _, auth in ls.hits)


def test_second_setup_cannot_get_the_refresh_token(ls, attacker):
    client = app_client(ImageLoader(api_key=REFRESH))
    client.post("/setup", json={"project": "1.1", "schema": BRUSH, "hostname": ls.url})
    error_of(client.post("/setup", json={"project": "1.1", "schema": BRUSH, "hostname": attacker.url}), 403)
    predict(client, "/data/upload/1/a.png")  # the test LS refuses the refresh: 424, but only LS saw it
    assert attacker.posts == [] and attacker.hits == []
    assert [p for p, _, _ in ls.posts] == ["/api/token/refresh/"]
    assert REFRESH.encode() in ls.posts[0][1]


def test_setup_hostname_is_ignored_when_label_studio_url_is_set(ls, attacker):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
    assert client.post("/setup", json={"project": "1.1", "schema": BRUSH, "hostname": attacker.url}).status_code == 200
    assert predict(client, "/data/upload/1/a.png").status_code == 200
    assert attacker.hits == [] and ls.hits[-1][1] == f"Token {TOKEN}"


def test_authenticated_setup_may_move_the_origin(ls, attacker):
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    client = app_client(ImageLoader(api_key=TOKEN), basic_auth_user="u", basic_auth_pass="p")
    client.post("/setup", json={"project": "1", "schema": BRUSH, "hostname": ls.url}, headers=auth)
    r = client.post("/setup", json={"project": "1", "schema": BRUSH, "hostname": attacker.url}, headers=auth)
    assert r.status_code == 200
    assert predict(client, "/data/upload/1/a.png", headers=auth).status_code == 200
    assert attacker.hits == [("/data/upload/1/a.png", f"Token {TOKEN}")]


@pytest.mark.parametrize("hostname", ["ftp://ls.example", "not a url", "http://user:pw@ls.example", "http://"])
def test_setup_rejects_unusable_hostnames(hostname):
    client = app_client(ImageLoader(api_key=TOKEN))
    error_of(client.post("/setup", json={"project": "1", "schema": BRUSH, "hostname": hostname}), 422)


# ---------------------------------------------------------------------------------------------
# The outbound fetch policy (SSRF)
# ---------------------------------------------------------------------------------------------

REFUSED_ADDRESSES = ["127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::",
                     "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
                     "2002:7f00:1::1", "64:ff9b::a00:1", "2001:db8::1", "ff02::1"]
PUBLIC_ADDRESSES = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                    "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_policy_refuses_internal_addresses(address):
    assert not is_public_address(address)
    assert not FetchPolicy().allows(("http", "images.example", 80), address)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_policy_allows_public_addresses(address):
    assert is_public_address(address)
    assert FetchPolicy().allows(("https", "images.example", 443), address)


def test_allow_list_entries():
    policy = FetchPolicy("images.lan, *.corp.example, 10.0.0.0/8, 127.0.0.1:9000, [::1]:9001")
    assert policy.allows(("http", "images.lan", 80), "192.168.1.5")
    assert policy.allows(("http", "a.b.corp.example", 80), "172.16.0.2")
    assert not policy.allows(("http", "corp.example.evil", 80), "172.16.0.2")
    assert policy.allows(("http", "anything", 80), "10.9.9.9")
    assert policy.allows(("http", "x", 9000), "127.0.0.1") and not policy.allows(("http", "x", 9002), "127.0.0.1")
    assert policy.allows(("http", "x", 9001), "::1")
    assert FetchPolicy().allows(("http", "ls", 8080), "10.0.0.5", trusted=[("http", "ls", 8080)])
    assert not FetchPolicy().allows(("http", "ls", 8081), "10.0.0.5", trusted=[("http", "ls", 8080)])
    for bad in ("host:port", "a b", "[::1", "10.0.0.0/33x"):
        with pytest.raises(ConfigError):
            parse_allowed_hosts(bad)


@pytest.mark.parametrize("make_url", [
    lambda target: f"{target.url}/internal.png",  # the loopback address itself
    lambda target: f"http://localhost:{target.port}/internal.png",
    lambda target: f"http://2130706433:{target.port}/internal.png",  # 127.0.0.1 as one number
    lambda target: f"http://127.1:{target.port}/internal.png",
    lambda target: f"http://[::ffff:127.0.0.1]:{target.port}/internal.png",
])
def test_internal_urls_are_refused_without_a_connection(ls, make_url):
    with RecordingServer() as internal:
        client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
        message = error_of(predict(client, make_url(internal)), 403)
        assert "SQSAM_ALLOWED_HOSTS" in message
        assert internal.hits == []


def test_redirect_from_public_host_to_loopback_is_refused(ls):
    """public.test resolves (test resolver) to a loopback server allowed by name and port, which
    redirects to another loopback port: the re-check after the redirect must refuse it."""
    with RecordingServer() as internal, RecordingServer() as public:
        for target in (f"{internal.url}/secret.png", f"http://localhost:{internal.port}/secret.png",
                       f"http://public.test:{internal.port}/secret.png"):
            public.routes["/img.png"] = ("redirect", target)

            def resolver(host, port):
                assert host in ("public.test", "localhost", "127.0.0.1")
                return [(2, ("127.0.0.1", port))]

            loader = ImageLoader(ls_url=ls.url, allowed_hosts=f"public.test:{public.port}", resolver=resolver)
            client = app_client(loader)
            error_of(predict(client, f"http://public.test:{public.port}/img.png"), 403)
            assert public.hits[-1][0] == "/img.png"
        assert internal.hits == []
        # the same chain ending on an allowed host succeeds: the redirect is followed, not refused blindly
        public.routes["/img.png"] = ("redirect", f"http://public.test:{public.port}/final.png")
        client = app_client(ImageLoader(ls_url=ls.url, allowed_hosts=f"public.test:{public.port}",
                                        resolver=lambda h, p: [(2, ("127.0.0.1", p))]))
        assert predict(client, f"http://public.test:{public.port}/img.png").status_code == 200
        assert public.hits[-1][0] == "/final.png"


def test_too_many_redirects(ls):
    ls.routes["/loop.png"] = ("redirect", "/loop.png")
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
    assert "redirects" in error_of(predict(client, "/loop.png"), 424)
    assert len(ls.hits) == 6  # the first request and 5 redirects


def test_connection_goes_to_the_checked_address(ls):
    """DNS rebinding: the name is resolved once per hop and the socket connects to that answer."""
    answers = [[(2, ("127.0.0.1", ls.port))], [(2, ("127.0.0.2", ls.port))]]
    calls = []

    def resolver(host, port):
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]

    loader = ImageLoader(ls_url=ls.url, allowed_hosts=f"rebind.test:{ls.port}", resolver=resolver)
    assert predict(app_client(loader), f"http://rebind.test:{ls.port}/a.png").status_code == 200
    assert calls == ["rebind.test"] and ls.hits[-1][0] == "/a.png"


def test_label_studio_on_loopback_allows_only_its_own_port(ls):
    with RecordingServer() as neighbour:
        client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
        assert predict(client, f"{ls.url}/data/upload/1/a.png").status_code == 200
        error_of(predict(client, f"{neighbour.url}/data/upload/1/a.png"), 403)
        assert neighbour.hits == []


def test_allowed_hosts_from_the_environment(ls, monkeypatch):
    with RecordingServer() as other:
        monkeypatch.setenv("SQSAM_ALLOWED_HOSTS", f"127.0.0.1:{other.port}")
        monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
        client = app_client(ImageLoader.from_env())
        assert predict(client, f"{other.url}/a.png").status_code == 200
        monkeypatch.setenv("SQSAM_ALLOWED_HOSTS", "not a host")
        with pytest.raises(ConfigError):
            ImageLoader.from_env()


# ---------------------------------------------------------------------------------------------
# Errors do not tell open ports from closed ones
# ---------------------------------------------------------------------------------------------


def _generic(message: str, port: int) -> str:
    return message.replace(str(port), "PORT")


def test_fetch_errors_do_not_map_the_network():
    loader = ImageLoader(allowed_hosts="127.0.0.1", timeout=1.5)
    client = app_client(loader)
    messages = {}
    port = closed_port()
    messages["closed"] = _generic(error_of(predict(client, f"http://127.0.0.1:{port}/a.png"), 424), port)
    for mode in ("hang", "reset", "garbage", "drip"):
        with FaultServer(mode, duration=5) as server:
            messages[mode] = _generic(error_of(predict(client, f"{server.url}/a.png"), 424), server.port)
    assert len(set(messages.values())) == 1, messages
    text = messages["closed"]
    assert "http://127.0.0.1:PORT/a.png" in text
    for leak in ("refused]", "Errno", "ConnectionError", "ConnectionRefused", "timed out]", "SSH", "reset by"):
        assert leak not in text

    def no_such_name(host, port):  # no DNS query leaves the machine: the lookup fails here
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loader = ImageLoader(allowed_hosts="127.0.0.1", timeout=1.5, resolver=no_such_name)
    unresolvable = error_of(predict(app_client(loader), "http://no-such-host.invalid/a.png"), 424)
    assert unresolvable.replace("no-such-host.invalid", "127.0.0.1:PORT") == text


def test_fetch_error_names_no_query_or_credentials(ls):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
    ls.routes["/x.png"] = ("status", 404)
    message = error_of(predict(client, "/x.png?X-Amz-Signature=secret123"), 424)
    assert "secret123" not in message and TOKEN not in message


# ---------------------------------------------------------------------------------------------
# Basic auth fails closed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user, password", [("u", None), (None, "p"), ("u", ""), ("", "p")])
def test_half_a_basic_auth_pair_refuses_to_start(user, password):
    with pytest.raises(ConfigError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        create_app(model=ComponentModel(), loader=ImageLoader(),
                   settings=Settings(basic_auth_user=user, basic_auth_pass=password))


def test_half_a_basic_auth_pair_from_the_environment(monkeypatch):
    monkeypatch.setenv("BASIC_AUTH_USER", "u")
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    with pytest.raises(ConfigError):
        create_app(model=ComponentModel(), loader=ImageLoader())


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("headers, status", [
    ({}, 401), (_basic("u", "wrong"), 401), (_basic("wrong", "p"), 401), (_basic("u", ""), 401),
    ({"Authorization": "Bearer p"}, 401), ({"Authorization": "Basic !!!"}, 401), (_basic("u", "p"), 200),
])
def test_basic_auth_matrix(ls, headers, status, caplog):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN), basic_auth_user="u", basic_auth_pass="p")
    with caplog.at_level(logging.WARNING, logger="sqsam_label_studio"):
        for method, path, body in (("get", "/versions", None), ("post", "/setup", {"project": "1", "schema": BRUSH}),
                                   ("post", "/predict", predict_payload([image_task("/data/upload/1/a.png")])),
                                   ("post", "/webhook", {"action": "X"}), ("get", "/metrics", None)):
            r = getattr(client, method)(path, json=body, headers=headers)
            assert r.status_code == status, (path, r.get_data(as_text=True))
            if status == 401:
                assert r.get_json()["error"] and r.headers["WWW-Authenticate"].startswith("Basic")
    if status == 401:
        assert sum("basic auth failed" in rec.getMessage() for rec in caplog.records) == 5
    health = client.get("/health")
    assert health.status_code == 200 and set(health.get_json()) == {"status", "model_class", "model_version"}


def test_no_basic_auth_configured_means_open(ls):
    client = app_client(ImageLoader(ls_url=ls.url, api_key=TOKEN))
    assert client.get("/versions").status_code == 200


def test_serve_refuses_half_an_auth_pair(tmp_path):
    from tests.conftest import build_fixture_model

    model = build_fixture_model(tmp_path / "fixture.onnx")
    env = {**os.environ, "BASIC_AUTH_USER": "u", "PYTHONPATH": str(REPO)}
    env.pop("BASIC_AUTH_PASS", None)
    proc = subprocess.run([sys.executable, "-m", "sqsam_core", "serve", "label-studio", "--port", "0",
                           "--model", str(model)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sqsam: error: ") and "BASIC_AUTH_PASS" in lines[0], proc.stderr


def test_dockerfile_healthcheck_passes_with_auth_on():
    """Run the Dockerfile's HEALTHCHECK command against a real server with basic auth on."""
    from sqsam_label_studio.lsproc import BackgroundServer

    text = (REPO / "Dockerfile").read_text()
    command = re.search(r'HEALTHCHECK .*?\n\s*CMD python -c "(.*?)"\n', text, re.S)
    assert command, "Dockerfile HEALTHCHECK not found"
    app = create_app(model=ComponentModel(), loader=ImageLoader(),
                     settings=Settings(basic_auth_user="u", basic_auth_pass="p"))
    with BackgroundServer(app) as server:
        port = server.url.rsplit(":", 1)[1]
        proc = subprocess.run([sys.executable, "-c", command.group(1)], env={**os.environ, "PORT": port},
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_fetch_policy_error_is_an_image_fetch_error():
    assert issubclass(ImageFetchError, ValueError)  # a SqsamError: adapters map it by its status

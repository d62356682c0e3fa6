"""No password or secret of a connection string in any output: CLI verbs, exceptions, reprs,
log records. Every secret below contains "S3cr", so one substring check covers all of them,
whatever encoding they were written in."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.parse

import pytest

import mmm
from mmm import redact

MMM = [sys.executable, "-m", "mmm"]
SECRET = "S3cr"
PASSWORD = "S3cr:t@pw%40x"  # ':', '@' and a literal '%40' in one password
ENCODED = urllib.parse.quote_plus(PASSWORD)  # S3cr%3At%40pw%2540x
MALFORMED = f"mongodb://admin:{PASSWORD}@127.0.0.1:1/?replicaSet=rs0"  # not percent-encoded
TOKEN = "authMechanismProperties=AWS_SESSION_TOKEN:S3crTok,SERVICE_NAME:S3crSvc"
FAST = "serverSelectionTimeoutMS=300&connectTimeoutMS=300"


def mmm_cli(*args, env=None, timeout=60):
    out = subprocess.run(MMM + list(args), capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "MMM_TEST_SECRET": "S3crVar", **(env or {})})
    return out, out.stdout + out.stderr


def assert_clean(text: str) -> None:
    assert SECRET not in text, text
    assert "Traceback" not in text, text


@pytest.fixture
def secret_config(mongo_server, tmp_path):
    """A reachable server whose URI holds a password (its authentication fails), one whose
    password comes from ${MMM_TEST_SECRET}, and one with a secret option, all unreachable but
    the first."""
    host = mongo_server.uri.split("://", 1)[1].split("/", 1)[0]
    cfg = tmp_path / "mmm.yml"
    cfg.write_text(
        "good:\n  id: G\n"
        f"  uri: 'mongodb://admin:{ENCODED}@{host}/?replicaSet=rs0&serverSelectionTimeoutMS=2000'\n"
        "envpw:\n  id: E\n"
        f"  uri: 'mongodb://admin:${{MMM_TEST_SECRET}}@127.0.0.1:1/?replicaSet=rs0&{FAST}'\n"
        "links:\n  - {src: good/app.t, dst: envpw/app.t}\n"
    )
    return cfg


@pytest.mark.parametrize("verb", [["dump-config"], ["validate"], ["status"], ["status", "--json"],
                                  ["replicate", "--src", "good/app.u", "--dst", "envpw/app.u"],
                                  ["replicate", "--src", "envpw/app.v", "--dst", "good/app.v"]])
def test_cli_verbs_print_no_secret(secret_config, verb):
    out, text = mmm_cli("-vv", "-c", str(secret_config), *verb)
    assert_clean(text)
    assert "mongodb://" not in text or "***" in text or "${MMM_TEST_SECRET}" in text


def test_dump_config_keeps_variables_and_hides_literals(secret_config):
    with open(secret_config, "a") as f:
        f.write("opts:\n  id: O\n"
                f"  uri: 'mongodb://${{MMM_TEST_SECRET}}@127.0.0.1:1/?{FAST}&tlsCertificateKeyFilePassword=S3crKey'\n")
    out, text = mmm_cli("-c", str(secret_config), "dump-config")
    assert out.returncode == 0, text
    assert "mongodb://***:${MMM_TEST_SECRET}@127.0.0.1:1/" in out.stdout  # the user is a literal
    assert "mongodb://${MMM_TEST_SECRET}@127.0.0.1:1/" in out.stdout
    assert "mongodb://***@" in out.stdout and "tlsCertificateKeyFilePassword=***" in out.stdout
    assert_clean(text)


def test_run_prints_no_secret(secret_config):
    proc = subprocess.Popen(MMM + ["-vv", "-c", str(secret_config), "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "MMM_TEST_SECRET": "S3crVar"})
    try:
        stdout, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    assert_clean(stdout + stderr)
    assert "good" in stderr  # the authentication failure on it is reported, without the password


@pytest.mark.parametrize("uri", [
    MALFORMED,
    f"mongodb://admin:{PASSWORD.replace('@', '/')}@127.0.0.1:1/",
    f"mongodb://admin:{ENCODED}@127.0.0.1:notaport/?replicaSet=rs0",
    f"mongodb://admin:{ENCODED}@127.0.0.1:1/?{TOKEN}&authMechanism=MONGODB-AWS&{FAST}",
    f"mongodb://127.0.0.1:1/?authMechanismProperties=S3crGarbage&{FAST}",
    f"mongodb://127.0.0.1:1/?tlsCertificateKeyFilePassword=S3crKey&w=-5&{FAST}",
])
def test_every_path_hides_a_bad_uri(tmp_path, uri):
    # ValueError from the Python API
    with pytest.raises(ValueError) as e:
        mmm.Replicator({"a": {"id": "A", "uri": uri}, "b": {"id": "B", "uri": "mongodb://127.0.0.1:1/"}},
                       [("a/d.c", "b/d.c")], preflight=False)
    assert_clean(str(e.value))
    with pytest.raises(ValueError) as e:
        mmm.Tailer(uri)
    assert_clean(str(e.value))
    try:  # PyMongo accepts some of these (it checks options when it connects)
        mmm.Tailer("mongodb://127.0.0.1:1/", name="t", checkpoint_store=uri)._store.close()
    except ValueError as e:
        assert_clean(str(e))
    # the CLI, from a file
    cfg = tmp_path / "m.yml"
    cfg.write_text(f"a:\n  id: A\n  uri: '{uri}'\nb:\n  id: B\n  uri: 'mongodb://127.0.0.1:1/?{FAST}'\n")
    for verb in (["dump-config"], ["validate"], ["status"], ["run"],
                 ["replicate", "--src", "a/d.c", "--dst", "b/d.c"]):
        out, text = mmm_cli("-c", str(cfg), *verb)
        assert_clean(text)
        assert out.returncode != 0 or verb == ["dump-config"], (verb, text)


def test_whole_uri_from_a_variable_is_never_printed(tmp_path):
    cfg = tmp_path / "m.yml"
    cfg.write_text("a:\n  id: A\n  uri: '${MMM_TEST_URI}'\n")
    for value in (f"mongodb://u:{ENCODED}@127.0.0.1:1/?{FAST}", f"S3crNotAUri", MALFORMED):
        out, text = mmm_cli("-c", str(cfg), "dump-config", env={"MMM_TEST_URI": value})
        assert_clean(text)
        out, text = mmm_cli("-c", str(cfg), "validate", env={"MMM_TEST_URI": value})
        assert_clean(text)
        assert out.returncode == 1


def test_repr_of_server_and_config():
    s = mmm.Server("a", "A", f"mongodb://admin:{ENCODED}@h/?{TOKEN}")
    assert_clean(repr(s))
    assert "mongodb://***@h/" in repr(s) and s.uri.startswith("mongodb://admin:")
    config = mmm.config.parse_config(f"a:\n  id: A\n  uri: 'mongodb://admin:{ENCODED}@h/'\n")
    assert_clean(repr(config))


def test_log_records_and_exceptions_lose_remembered_secrets(caplog):
    uri = f"mongodb://admin:{ENCODED}@127.0.0.1:1/?replicaSet=rs0&{FAST}&{TOKEN}"
    redact.remember(uri)
    log = logging.getLogger("mmm.replication")
    with caplog.at_level(logging.DEBUG, logger="mmm"):
        log.warning("connecting to %s with password %s, token %s", uri, ENCODED, "S3crTok")
        try:
            raise RuntimeError(f"failed: {urllib.parse.unquote_plus(ENCODED)}")
        except RuntimeError:
            log.exception("while connecting")
    assert "***" in caplog.text
    assert_clean(caplog.text.replace("Traceback", ""))


def test_preflight_hides_the_password_of_an_unreachable_server(caplog):
    r = mmm.Replicator({"a": {"id": "A", "uri": f"mongodb://admin:{ENCODED}@127.0.0.1:1/?replicaSet=rs0&{FAST}"},
                        "b": {"id": "B", "uri": f"mongodb://127.0.0.1:1/?replicaSet=rs0&{FAST}"}},
                       [("a/d.c", "b/d.c")])
    with caplog.at_level(logging.WARNING, logger="mmm"):
        r.start(ready_timeout=0.5)
        r.stop()
        r.join(10)
    assert "unreachable" in caplog.text
    assert_clean(caplog.text)
    assert "Topology Description" not in caplog.text
    for row in r.status():
        assert_clean(str(row))


def test_redact_rules_in_one_place():
    assert redact.uri(MALFORMED) == "mongodb://***@127.0.0.1:1/?replicaSet=rs0"
    assert redact.uri(f"mongodb://h/?{TOKEN}") == "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN:***,SERVICE_NAME:***"
    assert redact.uri("mongodb://${U}:${P}@h", keep_variables=True) == "mongodb://${U}:${P}@h"
    assert redact.userinfo_problem(MALFORMED) and SECRET not in redact.userinfo_problem(MALFORMED)
    assert redact.userinfo_problem(f"mongodb://admin:{ENCODED}@h/") is None
    assert_clean(redact.text(f"see {MALFORMED!r} and 'mongodb+srv://x:{ENCODED}@c.example.net'"))

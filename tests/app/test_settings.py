"""Settings: defaults, one typed field per setting, every validation error is one sentence naming the setting,
unknown names warn."""

import dataclasses
import re
import typing

import pytest

from app.kafka import broker_bind, kafka_security
from app.settings import SPECS, Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert s.bootstrap_servers == ["localhost:9092"]
    assert (s.partitions, s.store, s.web_host, s.web_port, s.tz, s.clock) == (
        8,
        "memory://",
        "127.0.0.1",
        6066,
        "UTC",
        "wall",
    )
    assert (s.grace, s.sl_threshold, s.short_abandon, s.sl_goal, s.abandon_goal) == (
        120.0,
        20.0,
        10.0,
        0.8,
        0.05,
    )
    assert s.session.grace_ms == 120_000 and s.session.call_timeout_ms == 14_400_000
    assert s.kpi.targets.default.sl_threshold_ms == 20_000
    assert s.validation.max_event_bytes == 65536
    assert any("CALLER_KEY" in w for w in s.warnings)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("GRACE", "soon", "CALLPULSE_GRACE must be a number"),
        ("GRACE", "-1", "CALLPULSE_GRACE must be a number between 0 and 86400"),
        ("PARTITIONS", "2.5", "CALLPULSE_PARTITIONS must be a whole number"),
        ("PARTITIONS", "0", "CALLPULSE_PARTITIONS must be a whole number between 1"),
        ("WEB_PORT", "70000", "CALLPULSE_WEB_PORT must be a whole number between 1 and 65535"),
        ("SL_GOAL", "80", "CALLPULSE_SL_GOAL must be a number between 0 and 1"),
        ("STORE", "redis://", "CALLPULSE_STORE must be memory:// or rocksdb://"),
        ("CLOCK", "sundial", "CALLPULSE_CLOCK must be one of wall, event"),
        ("INTERVAL", "20", "CALLPULSE_INTERVAL must be one of 15, 30"),
        ("TZ", "Moon/Base", "CALLPULSE_TZ must be an IANA time zone"),
        ("DAY_START", "24", "CALLPULSE_DAY_START must be a whole number between 0 and 23"),
        ("BROKER", "http://x:1", "CALLPULSE_BROKER must be kafka://host:port"),
        ("QUEUES_FILE", "/nonexistent.yaml", "CALLPULSE_QUEUES_FILE names '/nonexistent.yaml'"),
        ("SECURITY_PROTOCOL", "SASL_SSL", "needs CALLPULSE_SASL_USERNAME and CALLPULSE_SASL_PASSWORD"),
        ("EMBEDDED_BROKER", "maybe", "CALLPULSE_EMBEDDED_BROKER must be auto, true or false"),
        ("COMPRESSION", "brotli", "CALLPULSE_COMPRESSION must be one of none, gzip, snappy, lz4, zstd"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_setting(name, value, fragment):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"CALLPULSE_" + name: value})
    message = str(info.value)
    assert fragment in message
    assert message.count(".") >= 1 and "\n" not in message and message.endswith(".")


def test_unknown_names_warn_with_a_suggestion():
    s = Settings.from_env({"CALLPULSE_GRACEE": "5", "CALLPULSE_CALLER_KEY": "k"})
    assert s.warnings == (
        "CALLPULSE_GRACEE is not a callpulse setting and is ignored (did you mean CALLPULSE_GRACE?).",
    )


def test_secrets_are_not_shown():
    s = Settings.from_env(
        {
            "CALLPULSE_CALLER_KEY": "topsecret",
            "CALLPULSE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CALLPULSE_SASL_USERNAME": "u",
            "CALLPULSE_SASL_PASSWORD": "pw",
        }
    )
    assert "topsecret" not in repr(s) and "pw'" not in repr(s)
    assert kafka_security(s)["sasl_plain_password"] == "pw"


def test_queues_file_overrides_per_queue(tmp_path):
    f = tmp_path / "queues.yaml"
    f.write_text("vip:\n  sl_threshold: 10\n  sl_goal: 0.9\nsales:\n  short_abandon: 0\n")
    s = Settings.from_env({"CALLPULSE_QUEUES_FILE": str(f), "CALLPULSE_SL_THRESHOLD": "30"})
    assert s.targets.for_queue("vip").sl_threshold_s == 10 and s.targets.for_queue("vip").sl_goal == 0.9
    assert s.targets.for_queue("vip").short_abandon_s == 10  # not overridden: the default
    assert (
        s.targets.for_queue("sales").sl_threshold_s == 30
        and s.targets.for_queue("sales").short_abandon_s == 0
    )
    assert s.targets.for_queue("other").sl_threshold_s == 30


def test_queues_file_gives_wrap_up_times_and_static_members(tmp_path):
    f = tmp_path / "queues.yaml"
    f.write_text("sales:\n  wrapup: 5\n  members: [Alice, Bob, Carol]\nsupport:\n  members: [Carol, Erin]\n")
    session = Settings.from_env({"CALLPULSE_QUEUES_FILE": str(f)}).session
    assert session.agent_rules("Carol").static == ("sales", "support")
    assert session.agent_rules("Erin").static == ("support",)
    assert session.agent_rules("Zoe").static == ()
    rules = session.agent_rules("Alice")
    assert (rules.wrapup_ms("sales"), rules.wrapup_ms("support"), rules.wrapup_ms("")) == (5000, 0, 0)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("vip: [1, 2]\n", "queue 'vip' must map to a table"),
        ("vip:\n  sl_treshold: 10\n", "unknown field 'sl_treshold'"),
        ("vip:\n  sl_goal: high\n", "field 'sl_goal' must be a number"),
        ("vip:\n  sl_goal: 1.5\n", "goals must lie between 0 and 1"),
        ("vip: {\n", "does not parse"),
        ("vip:\n  wrapup: -1\n", "wrap-up time must be >= 0"),
        ("vip:\n  members: Alice\n", "field 'members' must be a list of agent ids"),
    ],
)
def test_bad_queues_files(tmp_path, text, fragment):
    f = tmp_path / "queues.yaml"
    f.write_text(text)
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"CALLPULSE_QUEUES_FILE": str(f)})
    assert fragment in str(info.value) and "CALLPULSE_QUEUES_FILE" in str(info.value)


def test_broker_lists_and_bind_address():
    s = Settings.from_env({"CALLPULSE_BROKER": "kafka://localhost:19092,kafka://127.0.0.2:19093"})
    assert s.bootstrap_servers == ["localhost:19092", "127.0.0.2:19093"]
    assert broker_bind(s) == ("127.0.0.1", 19092)  # the host name resolved, never every interface


def test_every_setting_is_documented_in_docs_settings():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    missing = [n for n in SPECS if f"CALLPULSE_{n}" not in page]
    assert missing == []


def test_callpulse_settings_win_over_fausts_own_environment(monkeypatch, tmp_path):
    from app.faust_app import build, faust_options

    monkeypatch.setenv("BROKER_URL", "kafka://elsewhere:1")
    monkeypatch.setenv("WEB_PORT", "1")
    monkeypatch.setenv("STORE", "rocksdb://")
    settings = Settings.from_env(
        {
            "CALLPULSE_BROKER": "kafka://127.0.0.1:19999",
            "CALLPULSE_CALLER_KEY": "k",
            "CALLPULSE_DATADIR": str(tmp_path),
        }
    )
    app = build(settings, embedded=False).app
    assert [str(u) for u in app.conf.broker] == ["kafka://127.0.0.1:19999"]
    assert app.conf.web_port == 6066 and app.conf.store.scheme == "memory"
    # against the embedded broker every record is its own batch (exact end offsets) and sessions are short
    embedded = faust_options(settings, embedded=True)
    assert embedded["producer_max_batch_size"] == 1 and embedded["broker_session_timeout"] <= 10
    assert "producer_max_batch_size" not in faust_options(settings, embedded=False)


def test_the_fields_are_the_rows_of_specs_with_their_types(tmp_path):
    """One typed field per row of SPECS, in its order; a field admits None exactly when its setting can stay unset."""
    assert [f.name for f in dataclasses.fields(Settings)] == [name.lower() for name in SPECS] + [
        "warnings",
        "targets",
    ]
    hints = typing.get_type_hints(Settings)
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "queues.yaml").write_text("vip:\n  sl_goal: 0.9\n")
    unset = Settings.from_env({})
    every = Settings.from_env(
        {
            "CALLPULSE_ADVERTISED_URL": "http://worker-1:6066",
            "CALLPULSE_QUEUES_FILE": str(tmp_path / "queues.yaml"),
            "CALLPULSE_CALLER_KEY": "k",
            "CALLPULSE_API_TOKEN": "t",
            "CALLPULSE_SECURITY_PROTOCOL": "SASL_SSL",
            "CALLPULSE_SASL_USERNAME": "u",
            "CALLPULSE_SASL_PASSWORD": "pw",
            "CALLPULSE_SSL_CAFILE": str(tmp_path / "ca.pem"),
        }
    )
    for name in SPECS:
        field = name.lower()
        types = typing.get_args(hints[field]) or (hints[field],)
        assert (type(None) in types) == (getattr(unset, field) is None), name
        assert getattr(every, field) is not None, name
        for settings in (unset, every):
            assert type(getattr(settings, field)) in types, (name, getattr(settings, field))


def test_settings_are_frozen_and_a_misspelt_name_is_an_error():
    s = Settings.from_env({"CALLPULSE_CALLER_KEY": "k"})
    with pytest.raises(AttributeError):
        _ = s.partitons
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.partitions = 3


def test_mypy_sees_every_field_and_its_type(tmp_path, monkeypatch):
    from pathlib import Path

    from mypy import api

    repo = Path(__file__).resolve().parents[2]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from app.settings import Settings\n\ns = Settings.from_env({})\nreveal_type(s.partitions)\n"
        "reveal_type(s.advertised_url)\ns.partitons\ns.partitions = 3\n"
    )
    monkeypatch.chdir(repo)
    out, err, status = api.run(
        [str(probe), "--config-file", str(repo / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache")]
    )
    assert status == 1, out + err
    assert re.search(r':4: note: Revealed type is "(builtins\.)?int"', out), out
    assert re.search(r':5: note: Revealed type is "(builtins\.)?str \| None"', out), out
    assert ':6: error: "Settings" has no attribute "partitons"' in out
    assert ':7: error: Property "partitions" defined in "Settings" is read-only' in out
    assert "Found 2 errors in 1 file" in out

from __future__ import annotations

from pathlib import Path

import pytest

from config import Destination, SettingsError, load_settings
from config.settings import PrioritySettings


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRACTURE_TRIAGE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.study_stable_seconds == 30
    assert settings.destinations == ()


def test_toml_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'ae_title = "FROM_FILE"\nport = 4242\nstudy_stable_seconds = 5\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
    )
    monkeypatch.setenv("FRACTURE_TRIAGE_PORT", "5555")
    monkeypatch.setenv("FRACTURE_TRIAGE_DATABASE_URL", "postgresql://u@127.0.0.1/x")
    settings = load_settings(config, study_stable_seconds=1.5)
    assert settings.ae_title == "FROM_FILE"
    assert settings.port == 5555  # env beats the file
    assert settings.study_stable_seconds == 1.5  # overrides beat everything
    assert settings.database_url == "postgresql://u@127.0.0.1/x"
    assert settings.destinations == (
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
    )


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("port = 70000", "port"),
        ('ae_title = "THIS_AE_TITLE_IS_TOO_LONG"', "ae_title"),
        ("study_stable_seconds = -1", "study_stable_seconds"),
        ('database_url = "mysql://x"', "database_url"),
        ("no_such_key = 1", "no_such_key"),
        (
            '[[destinations]]\nname = "p"\nae_title = "A\\\\B"\nhost = "h"\nport = 1',
            "destinations.0.ae_title",
        ),
        ("[priority]\nreprocess_hours = [22, 24]", "priority.reprocess_hours"),
        ("[priority]\nreprocess_hours = [3, 3]", "priority.reprocess_hours"),
        ("batch_max_studies = 0", "batch_max_studies"),
        ('model_device = "gpu"', "model_device"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n")
    with pytest.raises(SettingsError, match=f"'{key}'"):
        load_settings(config)


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(SettingsError, match="fracture_likely_threshold"):
        load_settings(None, fracture_suspected_threshold=0.8, fracture_likely_threshold=0.2)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_settings_are_frozen() -> None:
    settings = load_settings(None)
    with pytest.raises(Exception, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_the_example_config_loads() -> None:
    """config/node.example.toml stays a valid, complete example."""
    example = Path(__file__).resolve().parents[2] / "config" / "node.example.toml"
    settings = load_settings(example)
    assert settings.ae_title == "FRACTURE_TRIAGE"
    assert [d.name for d in settings.destinations] == ["pacs"]
    assert settings.outputs.heatmap is True
    assert settings.priority.urgent_calling_ae_titles == ("ED_CR",)
    assert settings.scp_processes == 1 and settings.max_pdu_bytes == 262_144


def test_priority_rule_and_off_peak_window() -> None:
    priority = PrioritySettings(
        urgent_calling_ae_titles=("ED_CR",), urgent_modalities=("DX",), reprocess_hours=(22, 6)
    )
    assert priority.is_urgent("ED_CR", "CR") and priority.is_urgent("WARD", "DX")
    assert not priority.is_urgent("WARD", "CR") and not priority.is_urgent(None, None)
    # The window wraps around midnight: 22:00-05:59.
    assert [h for h in range(24) if priority.may_reprocess_at(h)] == [0, 1, 2, 3, 4, 5, 22, 23]
    daytime = PrioritySettings(reprocess_hours=(9, 17))
    assert [h for h in range(24) if daytime.may_reprocess_at(h)] == list(range(9, 17))
    assert all(PrioritySettings().may_reprocess_at(h) for h in range(24))


def test_nested_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTURE_TRIAGE_OUTPUTS__SR", "false")
    monkeypatch.setenv("FRACTURE_TRIAGE_HTTP__PORT", "9200")
    monkeypatch.setenv("FRACTURE_TRIAGE_DRIFT__FACTOR", "3")
    settings = load_settings()
    assert settings.outputs.sr is False and settings.outputs.summary is True
    assert settings.http.port == 9200 and settings.http.bind_address == "127.0.0.1"
    assert settings.drift.factor == 3.0


def test_log_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None, log_level="debug").log_level == "DEBUG"
    with pytest.raises(SettingsError, match="'log_format'"):
        load_settings(None, log_format="xml")


def test_toml_syntax_error_is_one_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('ae_title = "NODE"\nport = \n')
    with pytest.raises(SettingsError, match=r"is not valid TOML: .*line 2"):
        load_settings(path)


def test_the_flow_run_heartbeat_follows_the_mode_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Server mode: a Prefect server tells crashed runs by it; embedded: nobody reads it."""
    monkeypatch.delenv("FRACTURE_TRIAGE_PREFECT_FLOW_HEARTBEAT", raising=False)
    monkeypatch.delenv("FRACTURE_TRIAGE_PREFECT_API_URL", raising=False)
    assert load_settings(None).flow_heartbeat is False
    server = "http://127.0.0.1:4200/api"
    assert load_settings(None, prefect_api_url=server).flow_heartbeat is True
    assert load_settings(None, prefect_flow_heartbeat=True).flow_heartbeat is True
    off = load_settings(None, prefect_api_url=server, prefect_flow_heartbeat=False)
    assert off.flow_heartbeat is False

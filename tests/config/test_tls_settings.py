from __future__ import annotations

from pathlib import Path

import pytest

from config import Destination, SettingsError, TlsSettings, load_settings


def _pem_files(directory: Path) -> dict[str, Path]:
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "ca")}
    for path in files.values():
        path.write_text("-----BEGIN SOMETHING-----\n")
    return files


def test_tls_is_off_by_default() -> None:
    settings = load_settings(None)
    assert settings.tls is None
    assert Destination(name="p", ae_title="P", host="h", port=104).tls is False


def test_tls_from_toml(tmp_path: Path) -> None:
    files = _pem_files(tmp_path)
    config = tmp_path / "node.toml"
    config.write_text(
        f"[tls]\ncert_file = '{files['cert']}'\nkey_file = '{files['key']}'\n"
        f"ca_file = '{files['ca']}'\n"
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 2762\n'
        "tls = true\n"
    )
    settings = load_settings(config)
    assert settings.tls == TlsSettings(
        cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"]
    )
    assert settings.destinations[0].tls is True


@pytest.mark.parametrize("missing", ["cert_file", "key_file", "ca_file"])
def test_missing_tls_file_names_the_key(tmp_path: Path, missing: str) -> None:
    files = _pem_files(tmp_path)
    values = {"cert_file": files["cert"], "key_file": files["key"], "ca_file": files["ca"]}
    values[missing] = tmp_path / "absent.pem"
    with pytest.raises(SettingsError, match=rf"'tls\.{missing}'.*does not exist"):
        load_settings(None, tls=values)


def test_key_content_never_reaches_the_repr(tmp_path: Path) -> None:
    files = _pem_files(tmp_path)
    files["key"].write_text("-----BEGIN PRIVATE KEY-----\nSECRETMATERIAL\n")
    settings = load_settings(None, tls={"cert_file": files["cert"], "key_file": files["key"]})
    assert "SECRETMATERIAL" not in repr(settings)
    assert "SECRETMATERIAL" not in settings.model_dump_json()

"""Typed settings, loaded once per entrypoint and passed down (never a mutable global)."""

from config.domain.vocabulary import REGION_CLASSES, REGIONS, UNSUPPORTED, FractureLevel
from config.settings import (
    CONFIG_FILE_ENV,
    ENV_PREFIX,
    AnyDestination,
    Destination,
    DicomWebDestination,
    Settings,
    SettingsError,
    TlsSettings,
    load_settings,
    validate_ae_title,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "ENV_PREFIX",
    "REGIONS",
    "REGION_CLASSES",
    "UNSUPPORTED",
    "AnyDestination",
    "Destination",
    "DicomWebDestination",
    "FractureLevel",
    "Settings",
    "SettingsError",
    "TlsSettings",
    "load_settings",
    "validate_ae_title",
]

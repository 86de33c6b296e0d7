"""What a process needs to run flows: settings, one engine, the store, the model.

An entrypoint (the CLI's ``serve``/``demo``, a Prefect worker, a test) builds one
:class:`Runtime` from the settings it loaded and installs it; flows fetch it with
:func:`current_runtime`. The model is loaded once per process, on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from config import Settings, load_settings
from config.domain.findings import AlgorithmIdentity
from config.domain.intended_use import IntendedUse
from config.domain.vocabulary import LabelMeaning
from db.engine import engine_from_settings, make_session_factory
from db.repositories import ReceivedInstance
from dicom_node.delivery.outbox import Outbox
from dicom_node.receive.scp import InstanceUids
from dicom_node.store import InstanceStore
from models.runtime.bundle import load_bundle
from models.runtime.inference import HierarchicalModel
from models.runtime.metadata import BundleMetadata
from models.runtime.networks import resolve_device


class UnservableBundleError(ValueError):
    """A bundle the node must not run (the message names the bundle and why)."""


def refuse_unservable(metadata: BundleMetadata, bundle_dir: Path) -> None:
    """Raise :class:`UnservableBundleError` for a bundle whose positive labels did not mean
    a fracture: every result the node writes names a fracture, which would overstate it."""
    if metadata.label_meaning is not LabelMeaning.FRACTURE:
        raise UnservableBundleError(
            f"model bundle {str(bundle_dir)!r} was trained on labels that mean "
            f"{metadata.label_meaning.value!r}, but the node's results say 'fracture': it "
            "does not run this bundle"
        )


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: InstanceStore
    _model: HierarchicalModel | None = field(default=None, repr=False)
    _outbox: Outbox | None = field(default=None, repr=False)
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        engine = engine_from_settings(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            store=InstanceStore(settings.store_dir),
        )

    @property
    def output_dir(self) -> Path:
        return self.settings.output_dir

    @property
    def work_dir(self) -> Path:
        return self.settings.store_dir.parent / "work"

    @property
    def outbox(self) -> Outbox:
        with self._model_lock:
            if self._outbox is None:
                self._outbox = Outbox(self.settings, self.sessions)
            return self._outbox

    def model(self) -> HierarchicalModel:
        with self._model_lock:
            if self._model is None:
                if self.settings.torch_threads:
                    import torch

                    torch.set_num_threads(self.settings.torch_threads)
                model = load_bundle(
                    self.settings.model_bundle_dir,
                    device=resolve_device(self.settings.model_device),
                    max_batch=self.settings.inference_max_batch,
                )
                refuse_unservable(model.metadata, self.settings.model_bundle_dir)
                self._model = model
            return self._model

    def store_instance(
        self, data: bytes | memoryview, header: Dataset, calling_ae_title: str, urgent: bool = False
    ) -> ReceivedInstance:
        """Write an encoded instance to the store durably, as the SCP would (no association);
        the caller records what this returns in its own transaction."""
        uids = InstanceUids.of(header)
        stored = self.store.write(data, uids.study, uids.series, uids.sop_instance)
        return uids.received(
            stored,
            transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
            modality=str(header.Modality),
            calling_ae_title=calling_ae_title,
            urgent=urgent,
        )

    def share_model(self, other: Runtime) -> None:
        """Use ``other``'s model, loaded once (a scratch runtime in the same process)."""
        model = other.model()
        with self._model_lock:
            self._model = model

    def algorithm(self) -> AlgorithmIdentity:
        """The loaded model as the algorithm every result names."""
        metadata = self.model().metadata
        return AlgorithmIdentity(
            name=metadata.name,
            version=metadata.version,
            trained_on_synthetic_data=metadata.trained_on_synthetic_data,
        )

    def intended_use(self) -> IntendedUse:
        """What the loaded bundle declares it was made for (the header gate's rules)."""
        return self.model().metadata.intended_use

    def close(self) -> None:
        self.engine.dispose()


_installed: Runtime | None = None
_install_lock = threading.Lock()


def install_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one flows in this process use (entrypoints and tests only)."""
    global _installed
    with _install_lock:
        _installed = runtime


def current_runtime() -> Runtime:
    """The installed runtime, or one built from the environment (a bare Prefect worker)."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = Runtime.create(load_settings())
        return _installed

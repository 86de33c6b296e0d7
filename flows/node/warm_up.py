"""The embedded node's warm-up: one synthetic study through the real triage flow at start.

Much of a study's triage is paid once per process, on first use: Prefect's engine, client
and first flow run, torch's kernels, resampling an image to the network's size and a map
back to the image's, highdicom's tables of the standard, the JPEG 2000 decoder and
encoder. Without a warm-up the first study a PACS sends after a restart pays for all of
it. So before the node listens, a phantom study (fictional identifiers, synthetic pixels)
is triaged by ``triage_batch`` in a throwaway runtime: its own SQLite database, store and
output folder in a temporary folder, the model already loaded shared, and as its one
destination a loopback storage SCP that discards what it gets (the first association is
paid here too). Nothing of it reaches the node's database, audit trail, store or PACS;
it is removed at once. A failed warm-up is logged and the node starts anyway (the first
study pays).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless, generate_uid

from config import Destination
from db.migrate import upgrade
from db.repositories import StudyRepository
from db.statuses import StudyStatus
from dicom_node.delivery.sink import discarding_destination
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.flow import triage_batch
from flows.triage.payloads import TriageStatus
from models.training.phantoms import phantom_dataset, render_phantom

logger = logging.getLogger(__name__)

#: The calling AE title the warm-up study is recorded with (in its own database only).
WARM_UP_AE_TITLE = "WARM-UP"


@dataclass(frozen=True)
class WarmUp:
    """How the warm-up went: the study's triage status, the outputs built and not sent."""

    status: TriageStatus
    outputs: int
    undelivered: int
    seconds: float


def warm_up(runtime: Runtime) -> WarmUp | None:
    """Triage one phantom study in a throwaway runtime; None when it failed (logged).

    ``runtime`` (the node's) is installed again afterwards, whatever happened.
    """
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fracture-triage-warm-up-") as temp,
            discarding_destination() as sink,
        ):
            scratch = _scratch_runtime(runtime, Path(temp), sink)
            try:
                _store_phantom_study(scratch)
                install_runtime(scratch)
                with flow_run_settings(runtime.settings.flow_heartbeat):
                    (summary,) = triage_batch(max_studies=1)
            finally:
                install_runtime(runtime)
                scratch.close()
    except Exception as error:
        logger.warning("warm-up failed (%s); the first study pays for first use", error)
        return None
    seconds = time.monotonic() - started
    done = WarmUp(summary.status, len(summary.outputs), summary.undelivered, seconds)
    logger.info(
        "warm-up: a synthetic study %s with %d outputs in %.1f s",
        done.status,
        done.outputs,
        done.seconds,
    )
    return done


def _scratch_runtime(runtime: Runtime, folder: Path, sink: Destination) -> Runtime:
    """The node's settings with its own database and folders, and the sink as destination."""
    settings = runtime.settings.model_copy(
        update={
            "database_url": f"sqlite:///{folder / 'warm-up.db'}",
            "store_dir": folder / "store",
            "output_dir": folder / "outputs",
            "destinations": (sink,),
            "audit_syslog": None,
        }
    )
    scratch = Runtime.create(settings)
    upgrade(scratch.engine)
    scratch.share_model(runtime)
    return scratch


def _store_phantom_study(runtime: Runtime) -> None:
    """A three-view wrist study with a break, stored and recorded as the SCP would, READY.

    Its views are twice the network's input size (so both resampling paths run) and one
    is JPEG 2000 compressed, as PACS often send them: a warm-up that skipped a path left
    the first real study about 0.6 s slower than the later ones (benchmarks/cold_start.py).
    """
    rng = np.random.default_rng(0)
    rows = 2 * runtime.model().image_size
    study_uid, series_uid = generate_uid(), generate_uid()
    with runtime.sessions.begin() as session:
        studies = StudyRepository(session)
        for view in (1, 2, 3):
            ds = phantom_dataset(
                render_phantom("wrist", view == 1, rng, size=256),
                rows=rows,
                patient_name="WARM-UP^NODE",
                patient_id="WARM-UP",
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_instance_uid=generate_uid(),
                accession_number="WARMUP",
                instance_number=view,
                view_position="PA" if view == 1 else "LL",
            )
            if view == 2:
                ds.compress(JPEG2000Lossless)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            studies.record_instance(
                runtime.store_instance(buffer.getbuffer(), ds, WARM_UP_AE_TITLE)
            )
        studies.set_status(study_uid, StudyStatus.READY)

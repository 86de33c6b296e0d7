"""The node in embedded mode: SCP + completion watcher + in-process triage flows."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from db.repositories import RunRepository, StudyRepository
from dicom_node.atna.export import export_worker
from dicom_node.delivery.outbox import OutboxWorker
from dicom_node.receive.completion import StudyCompletionWatcher
from dicom_node.receive.scp import StorageSCP
from dicom_node.store import sweep_partial_writes
from flows.node.operations import NodeOperations
from flows.node.startup import (
    check_database,
    check_folders,
    load_model,
    port_taken,
    start_orchestration,
)
from flows.node.warm_up import warm_up
from flows.prefect_env import flow_run_settings
from flows.runtime import Runtime, install_runtime
from flows.triage.batch import retry_policy
from flows.triage.flow import triage_batch
from flows.triage.payloads import TriageSummary
from flows.triage.records import fail_unclaimed

logger = logging.getLogger(__name__)


class TriageService:
    """Receives studies and triages each one when it becomes ready.

    Triage runs in one worker thread (the models are CPU or GPU bound; more
    threads would only compete), a batch of ready studies at a time, urgent ones
    first, while the SCP keeps accepting.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.scp = StorageSCP(runtime.settings, runtime.sessions, runtime.store)
        self.watcher = StudyCompletionWatcher(
            runtime.sessions,
            dt.timedelta(seconds=runtime.settings.study_stable_seconds),
            self.submit,
            max_age=dt.timedelta(seconds=runtime.settings.study_max_age_seconds),
            triage_timeout=dt.timedelta(seconds=runtime.settings.triage_timeout_seconds),
        )
        self.outbox = OutboxWorker(runtime.outbox, runtime.settings.outbox_poll_seconds)
        self.audit_export = export_worker(runtime.settings, runtime.sessions)  # None: off
        # Operators: /healthz, /readyz, /metrics and the drift check (flows/node/operations.py).
        self.operations = NodeOperations(runtime, self.scp)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triage")
        self._futures: list[Future[list[TriageSummary]]] = []
        self._lock = threading.Lock()
        self._queued_batch: Future[list[TriageSummary]] | None = None
        self.address: tuple[str, int] | None = None

    def start(self) -> tuple[str, int]:
        """Start everything, or raise :class:`NodeStartError` with one line saying why."""
        runtime, settings = self.runtime, self.runtime.settings
        check_database(runtime)
        check_folders(runtime)
        load_model(runtime)
        start_orchestration(runtime)
        if settings.warm_up_at_start and not settings.prefect_api_url:
            # On the triage thread, which triages every later study: what torch and
            # Prefect keep per thread is set up for it, not for the main thread.
            self._executor.submit(warm_up, runtime).result()  # installs the runtime again
        install_runtime(runtime)
        # Writes a crash cut short left their .part files: removed (and audited) first.
        sweep_partial_writes(
            runtime.sessions, {"store": settings.store_dir, "outputs": settings.output_dir}
        )
        try:
            self.address = self.scp.start()
        except OSError as error:
            raise port_taken(error, (settings.bind_address, settings.port)) from None
        self.watcher.recover()
        self.watcher.start()
        self.outbox.start()  # also sends what a previous run left pending
        if self.audit_export is not None:
            self.audit_export.start()  # resumes after the last event the collector got
        # Only once nothing before can fail: stop() unfreezes, a failed start never calls it.
        freeze_start_up_objects()
        try:
            self.operations.start()  # last: /readyz sees everything else running
        except OSError:
            self.stop()
            raise
        return self.address

    def submit(self, study_instance_uid: str) -> Future[list[TriageSummary]]:
        """Hand on a ready study: server mode, a flow run of its own; embedded, a batch.

        Embedded, one batch waits in the queue at most: every study that becomes
        ready before it starts joins it (the batch claims all READY studies).
        """
        with self._lock:
            if self.runtime.settings.prefect_api_url:
                future = self._executor.submit(self._create_flow_run, study_instance_uid)
            elif self._queued_batch is not None:
                return self._queued_batch
            else:
                future = self._queued_batch = self._executor.submit(self._triage_ready)
            self._futures.append(future)
            return future

    def _triage_ready(self) -> list[TriageSummary]:
        """Embedded: ``triage_batch`` runs until no READY study is left (urgent first)."""
        with self._lock:
            self._queued_batch = None  # from now on a new ready study queues a new batch
        done: list[TriageSummary] = []
        limit = self.runtime.settings.batch_max_studies
        while self._any_ready():  # no flow run (and no heartbeat) for an empty batch
            try:
                with flow_run_settings(self.runtime.settings.flow_heartbeat):
                    batch = triage_batch(max_studies=limit)
            except Exception as error:
                # The flow records each run's failure itself; what is still READY was never
                # claimed (the flow could not start): audited, and tried again with backoff.
                logger.error("triage batch failed: %s", type(error).__name__)
                self._fail_unclaimed(f"the triage flow could not run ({type(error).__name__})")
                break
            done += batch
            if len(batch) < limit:
                break
        return done

    def _any_ready(self) -> bool:
        with self.runtime.sessions() as session:
            return bool(StudyRepository(session).ready_now())

    def _fail_unclaimed(self, reason: str) -> None:
        with self.runtime.sessions() as session:
            waiting = StudyRepository(session).ready_now()
        policy = retry_policy(self.runtime.settings, orchestration=True)
        fail_unclaimed(self.runtime.sessions, waiting, reason, policy)

    def _create_flow_run(self, study_instance_uid: str) -> list[TriageSummary]:
        """Server mode: a flow run of the batch deployment, unless one is already waiting.

        The run claims every READY study when a worker starts it (urgent first), so
        one waiting run serves every study that becomes ready before it starts, and
        a worker loads the models once for the whole batch. When no run can be created
        (Prefect down, deployments not registered yet) the waiting studies are audited
        and handed on again after a backoff (the completion watcher does it).
        """
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.node.deployments import TRIAGE_BATCH_DEPLOYMENT

        try:
            with temporary_settings(
                updates={PREFECT_API_URL: self.runtime.settings.prefect_api_url}
            ):
                self._crash_abandoned_flow_runs(study_instance_uid)
                if self._batch_run_waiting(TRIAGE_BATCH_DEPLOYMENT):
                    logger.info("study %s: joins the waiting batch flow run", study_instance_uid)
                    return []
                run = run_deployment(
                    TRIAGE_BATCH_DEPLOYMENT,
                    timeout=0,  # create the run and return: a worker executes it
                    as_subflow=False,
                )
            logger.info("study %s: flow run %s created", study_instance_uid, run.id)
        except Exception as error:
            logger.error(
                "could not create a flow run for study %s: %s",
                study_instance_uid,
                type(error).__name__,
            )
            self._fail_unclaimed(f"no flow run could be created ({type(error).__name__})")
        return []

    @staticmethod
    def _batch_run_waiting(deployment_name: str) -> bool:
        """Whether a run of the deployment is scheduled or pending (not started yet)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(deployment_name)
            waiting = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                    )
                ),
                limit=1,
            )
        return bool(waiting)

    def _crash_abandoned_flow_runs(self, study_instance_uid: str) -> None:
        """Mark the flow runs of a killed worker CRASHED in Prefect.

        A worker that dies mid-run leaves its flow run RUNNING on the server, holding
        the deployment's inference slot; the watcher has failed our run and made the
        study READY again, so the server is told too and the slot is freed.
        """
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with self.runtime.sessions() as session:
            abandoned = RunRepository(session).lost_flow_run_ids(study_instance_uid)
        if not abandoned:
            return
        with get_client(sync_client=True) as client:
            for flow_run_id in abandoned:
                state = client.read_flow_run(flow_run_id).state
                if state is None or state.is_final():
                    continue
                client.set_flow_run_state(
                    flow_run_id, Crashed(message="worker lost; study triaged again"), force=True
                )
                logger.warning(
                    "study %s: flow run %s of a lost worker marked crashed",
                    study_instance_uid,
                    flow_run_id,
                )

    def stop(self) -> None:
        self.operations.stop()  # first: /readyz stops answering ready
        self.watcher.stop()
        self.scp.stop()
        self._executor.shutdown(wait=True, cancel_futures=False)
        self.outbox.stop()
        if self.audit_export is not None:
            self.audit_export.stop()  # after everything else, so their last events go too
        gc.unfreeze()  # one process may start many nodes (the tests do)

    def __enter__(self) -> TriageService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def freeze_start_up_objects() -> None:
    """Collect once, then move every object alive (modules, the model, Prefect's client:
    about half a million) out of the cyclic collector's sight until the node stops.

    Otherwise each full collection walks them all, about 0.25 s on this machine, at a
    moment no one chooses: mostly inside the first studies' triage. What a study creates
    later is still collected as usual (the ``gc.freeze`` pattern of long-running servers).
    """
    gc.collect()
    gc.freeze()

"""Same work as MONAI Deploy's App SDK: the node's triage_batch against an SDK app, per study.

Both sides read the same phantom CR studies (3 views, each view a series of its own) and
run the same network: DenseNet121 (2D, one input channel, random weights from a fixed
seed) at 320 px on 2 torch threads.

- Peer: a long-lived MONAI Deploy App SDK app (``benchmarks/monai_deploy_app``) in its own
  virtualenv: the SDK's DICOM data loader, series selector, series-to-volume conversion
  and text SR writer, with a classifier operator written after the SDK's example. The
  network (TorchScript, the SDK's model format) is loaded once; a feeder hands it one
  study folder per tick. One network forward per study, one Basic Text SR written.
- Node: ``triage_batch`` on one study at a time (as a study arriving alone is triaged),
  with the node's default settings, twice: only the SR switched on, then the default
  outputs (and, to show that setting's share, SR only with Prefect's flow-run heartbeat,
  as server mode's runs send it). It runs both its stages (region, then fracture with
  Grad-CAM: two networks of the same size), records everything in SQLite with its audit
  events and writes each output with fsync.

The first study of each side (torch's first calls, Prefect's first flow run) and the
model load are reported apart; the per-study figures are over the others (warm).

    python -m benchmarks.peer_monai_deploy [--studies 10] [--rounds 1] [--profile]
        [--peer-venv PATH] [--json out.json]

The first run installs the peer's virtualenv (var/bench/monai-deploy-venv: torch CPU,
then monai-deploy-app-sdk from PyPI: about 1.5 GB); later runs reuse it.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import highdicom
import monai
import numpy as np
import pydicom
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.common import machine_description, write_phantom_study
from config import REGION_CLASSES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER_VENV = REPO / "var" / "bench" / "monai-deploy-venv"
#: The peer's packages, pinned: the same torch, MONAI, pydicom and highdicom as the node's
#: (the SDK's operators package imports highdicom for its SEG writer).
PEER_REQUIREMENTS = (
    "monai-deploy-app-sdk==4.0.0",
    f"monai=={monai.__version__}",
    f"pydicom=={pydicom.__version__}",
    f"highdicom=={highdicom.__version__}",
)
TORCH_REQUIREMENT = f"torch=={torch.__version__.split('+')[0]}"  # the local CPU build first
#: Holoscan asks for a 32 MiB stack (it warns that less may crash); the peer gets it.
HOLOSCAN_STACK_BYTES = 32 * 1024 * 1024
#: The region every view is steered to, so that every view goes through stage 2.
BENCH_REGION = "wrist"

console = Console(width=150)  # the table is wider than a terminal's default


class PeerUnavailableError(RuntimeError):
    """The peer's virtualenv could not be installed (no PyPI, no wheel for this machine)."""


@dataclass
class SideResult:
    """One side's times in one round: model load, first study, then each warm study.

    ``*_cpu_seconds``: CPU time of the side's processes over the same spans (the node's
    includes its Prefect API server process); ``load_average``: the machine's 1-minute
    load when the side started.
    """

    side: str
    model_load_seconds: float
    first_study_seconds: float
    warm_study_seconds: list[float]
    warm_study_cpu_seconds: list[float]
    load_average: float


def process_tree_cpu_seconds() -> float:
    """CPU seconds of this process and of its live children (Linux ``/proc``)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[1]) == os.getpid():  # ppid; utime and stime follow (proc(5))
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# -- the peer ------------------------------------------------------------------------------


def ensure_peer_venv(venv: Path) -> Path:
    """The peer's virtualenv, created and installed first if it is missing or outdated.

    Raises PeerUnavailableError when pip cannot install it (the message says why).
    """
    stamp = venv / ".fracture-triage-requirements"
    wanted = "\n".join((TORCH_REQUIREMENT, *PEER_REQUIREMENTS))
    python = venv / "bin" / "python"
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    console.print(f"installing the peer's virtualenv in {venv} (first run only) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = (
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        # torch first: a bare torch requirement would pull a multi-GB CUDA build.
        [str(python), "-m", "pip", "install", "-q", TORCH_REQUIREMENT],
        [str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS],
        [str(python), "-c", "import holoscan.core, monai.deploy.operators"],
    )
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
        if result.returncode != 0:
            raise PeerUnavailableError(
                f"{' '.join(step[-2:])} failed: {(result.stderr or result.stdout)[-1500:]}"
            )
    stamp.write_text(wanted)
    return python


def save_peer_model(architecture: str, seed: int, path: Path) -> Path:
    """The peer's network as TorchScript (the SDK's model format), built by the node's registry."""
    from models.runtime.networks import NetworkSpec, build_network

    torch.manual_seed(seed)
    network = build_network(NetworkSpec(architecture=architecture, out_channels=1)).eval()
    torch.jit.save(torch.jit.script(network), path)
    return path


def bare_forward_seconds(
    model: Path, architecture: str, seed: int, views: int, image_size: int
) -> dict[str, float]:
    """The network alone over one study's views, in this process: as the peer loads it
    (TorchScript) and as the node runs it (eager, same weights); median of 5 calls each,
    alternating, after 2 warm-up calls (TorchScript optimises itself on its first calls).
    """
    from models.runtime.networks import NetworkSpec, build_network

    torch.manual_seed(seed)
    forms = {
        "torchscript": torch.jit.load(str(model)).eval(),
        "eager": build_network(NetworkSpec(architecture=architecture, out_channels=1)).eval(),
    }
    batch = torch.randn(views, 1, image_size, image_size)
    samples: dict[str, list[float]] = {name: [] for name in forms}
    with torch.no_grad():
        for repeat in range(7):
            for name, network in forms.items():
                started = time.perf_counter()
                network(batch)
                if repeat >= 2:
                    samples[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def _raise_stack_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = HOLOSCAN_STACK_BYTES
    if hard != resource.RLIM_INFINITY:
        wanted = min(hard, wanted)
    resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def run_peer(
    python: Path, studies_root: Path, model: Path, work: Path, threads: int, image_size: int
) -> tuple[SideResult, dict[str, str]]:
    """One run of the peer app over every study folder; its times and package versions."""
    load = os.getloadavg()[0]
    timings = work / "peer-timings.json"
    env = dict(
        os.environ,
        HOLOSCAN_INPUT_PATH=str(studies_root),
        HOLOSCAN_OUTPUT_PATH=str(work / "peer-output"),
        HOLOSCAN_MODEL_PATH=str(model),
        PYTHONPATH=str(REPO),  # the app's package only; the peer's venv has no project code
    )
    command = [
        str(python), "-m", "benchmarks.monai_deploy_app", "--threads", str(threads),
        "--image-size", str(image_size), "--timings", str(timings),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=3600,
        preexec_fn=_raise_stack_limit, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not timings.is_file():
        raise RuntimeError(f"the peer app failed: {(result.stderr or result.stdout)[-3000:]}")
    report = json.loads(timings.read_text())
    spans = list(zip(report["handed_over"], report["reported"], strict=True))
    seconds = [done[0] - start[0] for start, done in spans]
    cpu = [done[1] - start[1] for start, done in spans]
    written = list((work / "peer-output").glob("*.dcm"))
    if len(written) != len(seconds):
        raise RuntimeError(f"the peer wrote {len(written)} SRs for {len(seconds)} studies")
    peer = SideResult("peer", report["compose_seconds"], seconds[0], seconds[1:], cpu[1:], load)
    return peer, report["versions"]


# -- the node ------------------------------------------------------------------------------


def save_node_bundle(
    architecture: str, image_size: int, seed: int, target: Path, shared_backbone: bool = False
) -> Path:
    """An untrained bundle: the peer's very network as every region's fracture network;
    or, with ``shared_backbone``, one network of the same architecture for both stages.

    The region network is random too, but its output is steered to one region (a large
    bias on that class), so every view goes through stage 2 as a trained model's would
    for extremity radiographs; an untrained one could route views to 'unsupported'.
    """
    from config import REGIONS
    from models.runtime.bundle import BundleMetadata, OperatingPoints, save_bundle
    from models.runtime.networks import NetworkSpec, SharedStages, build_network, shared_outputs

    outputs = shared_outputs(len(REGIONS)) if shared_backbone else len(REGION_CLASSES)
    region_spec = NetworkSpec(architecture=architecture, out_channels=outputs)
    fracture_spec = NetworkSpec(architecture=architecture, out_channels=1)
    torch.manual_seed(seed)  # the same random weights in every run and round
    region = build_network(region_spec)
    last_layer = [m for m in region.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last_layer.bias[REGION_CLASSES.index(BENCH_REGION)] += 20.0
    metadata = BundleMetadata(
        name="bench-untrained",
        version="0",
        description="Random weights, for timing only.",
        intended_use="Benchmarks only.",
        training_data="None: random weights.",
        trained_on_synthetic_data=True,
        image_size=image_size,
        region_network=region_spec,
        fracture_network=fracture_spec,
        shared_backbone=shared_backbone,
        region_min_probability=0.0,
        # "suspected" at 0: every view is flagged whatever the random weights say, so both
        # forms draw the same captures and Grad-CAMs (the most the default outputs do).
        thresholds={r: OperatingPoints(suspected=0.0, likely=0.7) for r in REGIONS},
    )
    if shared_backbone:
        return save_bundle(target, metadata, SharedStages(region, REGIONS), None)
    torch.manual_seed(seed)  # as save_peer_model: the peer's very weights
    fracture = build_network(fracture_spec)
    return save_bundle(target, metadata, region, dict.fromkeys(REGIONS, fracture))


def run_node(
    side: str,
    bundle: Path,
    study_dirs: list[Path],
    work: Path,
    threads: int,
    profile: cProfile.Profile | None = None,
    **settings: object,
) -> SideResult:
    """``triage_batch`` on one study at a time, as a study arriving alone is triaged.

    ``settings`` override the node's defaults (``outputs``); ``profile`` profiles the
    warm studies. Prefect is imported here, after main() has pointed PREFECT_HOME.
    """
    from benchmarks.scale import make_runtime
    from config import Settings
    from db.models import StudyStatus
    from flows.prefect_env import flow_run_settings
    from flows.runtime import install_runtime
    from flows.triage.flow import triage_batch
    from tests.flows.conftest import store_study

    # As shipped (embedded: no flow-run heartbeat) unless ``settings`` say otherwise.
    defaults = {
        "torch_threads": threads,
        "prefect_flow_heartbeat": Settings.model_fields["prefect_flow_heartbeat"].default,
    }
    runtime = make_runtime(work, bundle, **(defaults | settings))
    heartbeat = runtime.settings.flow_heartbeat
    uids = [store_study(runtime, study) for study in study_dirs]
    started = time.perf_counter()
    runtime.model()  # loaded once per process, as in the node
    model_load = time.perf_counter() - started
    install_runtime(runtime)
    load = os.getloadavg()[0]
    seconds, cpu = [], []
    with flow_run_settings(heartbeat):
        for index, uid in enumerate(uids):
            started, started_cpu = time.perf_counter(), process_tree_cpu_seconds()
            if profile is not None and index > 0:
                (summary,) = profile.runcall(triage_batch, [uid])
            else:
                (summary,) = triage_batch([uid])
            seconds.append(time.perf_counter() - started)
            cpu.append(process_tree_cpu_seconds() - started_cpu)
            if summary.status != StudyStatus.TRIAGED.value:
                raise RuntimeError(f"the node did not triage study {index}: {summary.status}")
    runtime.close()
    install_runtime(None)
    return SideResult(side, model_load, seconds[0], seconds[1:], cpu[1:], load)


# -- where the node's time goes ----------------------------------------------------------------

#: (label, the function's file or folder, function): cumulative time of each, per warm study.
PROFILED_STEPS: tuple[tuple[str, str, str], ...] = (
    ("triage_batch, whole", "flows/triage/flow.py", "triage_batch"),
    ("decode and preprocess", "models/runtime/preprocessing.py", "preprocess_dicom_file"),
    ("stage 1: region network, pixel gate", "models/runtime/inference.py", "classify_regions"),
    ("stage 2: fracture network", "models/runtime/inference.py", "classify_fractures"),
    ("Grad-CAM (views at or above suspected)", "models/runtime/inference.py", "explain"),
    ("  of which the backward pass", "torch/autograd/__init__.py", "backward"),
    ("outputs: build and write", "flows/triage/", "build_outputs"),
    ("  SR", "dicom_node/outputs/sr.py", "build_triage_sr"),
    ("  summary SC", "dicom_node/outputs/summary.py", "build_summary_secondary_capture"),
    ("  GSPS", "dicom_node/outputs/presentation_state.py", "build_triage_gsps"),
    ("  annotated SCs: drawing", "dicom_node/outputs/drawing.py", "render_view"),
    ("  annotated SCs: build", "dicom_node/outputs/secondary_capture.py", "build_annotated_view"),
    ("  Parametric Maps", "dicom_node/outputs/parametric_map.py", "build_heatmap_parametric_map"),
    ("  files written with fsync", "dicom_node/store.py", "write_durably"),
)  # fmt: skip


def profile_summary(profile: cProfile.Profile, studies: int) -> dict[str, float | dict]:
    """Milliseconds per study in each step of PROFILED_STEPS, and the self-time shares.

    cProfile slows Python code more than torch's kernels: read the steps against the
    profiled whole, not against the timed runs.
    """
    from benchmarks.end_to_end import self_time_shares

    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    steps = {}
    for label, path, function in PROFILED_STEPS:
        cumulative = sum(
            timing[3]
            for (filename, _, name), timing in stats.items()
            if name == function and path in filename.replace("\\", "/")
        )
        steps[label] = round(1000 * cumulative / studies, 1)
    return {"ms_per_study": steps, "self_time_shares": self_time_shares(profile)}


# -- the report ------------------------------------------------------------------------------


def summarise(results: list[SideResult]) -> dict[str, float | int]:
    """One side over every round: warm median and p90, and the cold figures' medians."""
    warm = [s for r in results for s in r.warm_study_seconds]
    cpu = [s for r in results for s in r.warm_study_cpu_seconds]
    return {
        "warm_studies": len(warm),
        "median_seconds": round(statistics.median(warm), 3),
        "p90_seconds": round(float(np.percentile(warm, 90)), 3),
        "median_cpu_seconds": round(statistics.median(cpu), 3),
        "first_study_seconds": round(statistics.median(r.first_study_seconds for r in results), 3),
        "model_load_seconds": round(statistics.median(r.model_load_seconds for r in results), 3),
    }


def print_table(summaries: dict[str, dict[str, float | int]], title: str) -> None:
    table = Table(title=title)
    columns = (
        "side", "warm studies", "median s/study", "p90 s/study", "median / peer", "p90 / peer",
        "median CPU s", "CPU / peer", "first study s", "model load s",
    )  # fmt: skip
    for column in columns:
        table.add_column(column)
    peer = summaries["peer"]
    for side, row in summaries.items():
        table.add_row(
            side, str(row["warm_studies"]), f"{row['median_seconds']:.3f}",
            f"{row['p90_seconds']:.3f}",
            f"{row['median_seconds'] / peer['median_seconds']:.2f}",
            f"{row['p90_seconds'] / peer['p90_seconds']:.2f}",
            f"{row['median_cpu_seconds']:.3f}",
            f"{row['median_cpu_seconds'] / peer['median_cpu_seconds']:.2f}",
            f"{row['first_study_seconds']:.2f}", f"{row['model_load_seconds']:.2f}",
        )  # fmt: skip
    console.print(table)


@dataclass(frozen=True)
class NodeConfiguration:
    """One way the node runs: its settings, and whether its bundle is the shared-backbone
    form (one network for both stages) or the two-network one."""

    settings: dict[str, object]
    shared_backbone: bool = False


def node_configurations(diagnostic: bool = True) -> dict[str, NodeConfiguration]:
    """The node's configurations: only the SR switched on, and the default outputs, each
    with the two-network bundle and the shared-backbone one.

    ``diagnostic`` adds the SR-only one with Prefect's flow-run heartbeat (off embedded,
    on in server mode; a synchronous run waits for its thread at the end), to show that
    setting's share.
    """
    from config.settings import OutputSettings

    switches = ("sr", "summary", "annotated", "gsps", "parametric_map")
    # The peer's SR names no image region, so neither does this one (no SCOORD ROIs): the
    # node then needs no Grad-CAM at all, as nothing it writes draws a box or a map.
    only_sr = OutputSettings(**{name: name == "sr" for name in switches}, sr_rois=False)
    configurations = {
        "node-sr-only": NodeConfiguration({"outputs": only_sr}),
        "node-default-outputs": NodeConfiguration({}),
        "node-sr-only-shared": NodeConfiguration({"outputs": only_sr}, shared_backbone=True),
        "node-default-outputs-shared": NodeConfiguration({}, shared_backbone=True),
    }
    if diagnostic:  # what server mode's flow runs pay for Prefect's crash detection
        configurations["node-sr-only-heartbeat"] = NodeConfiguration(
            {"outputs": only_sr, "prefect_flow_heartbeat": True}
        )
    return configurations


def write_studies(root: Path, count: int, views: int, rows: int) -> list[Path]:
    """The phantom CR studies both sides read: one folder each, one series per view."""
    rng = np.random.default_rng(17)
    return [
        write_phantom_study(
            root,
            index,
            views,
            index % 2 == 0,
            rng,
            "Peer",
            rows,
            computed_radiography=True,
            series_per_view=True,
            # The node's stage 1 is steered to this region: a header naming another would
            # be a conflict, not assessed, and the node would skip work the peer does.
            region=BENCH_REGION,
        )
        for index in range(count)
    ]


@dataclass(frozen=True)
class BenchInputs:
    """What every round reads: the studies, the peer's model file and the node's bundle."""

    work: Path
    studies_root: Path
    studies: list[Path]
    peer_model: Path
    node_bundle: Path
    shared_bundle: Path  # the shared-backbone form of the same architecture

    def bundle(self, configuration: NodeConfiguration) -> Path:
        return self.shared_bundle if configuration.shared_backbone else self.node_bundle


def run_round(
    number: int, python: Path, inputs: BenchInputs, args: argparse.Namespace
) -> tuple[list[SideResult], dict[str, str], dict[str, float]]:
    """The peer, the bare network, then the node in each configuration, on the same studies."""
    work = inputs.work / f"round-{number}"
    (work / "peer").mkdir(parents=True)
    peer, versions = run_peer(
        python, inputs.studies_root, inputs.peer_model, work / "peer", args.threads,
        args.image_size,
    )  # fmt: skip
    bare = bare_forward_seconds(
        inputs.peer_model, args.architecture, args.seed, args.views, args.image_size
    )
    results = [peer]
    for side, node in node_configurations().items():
        bundle = inputs.bundle(node)
        results.append(
            run_node(side, bundle, inputs.studies, work / side, args.threads, **node.settings)
        )
    return results, versions, bare


def profile_node(inputs: BenchInputs, args: argparse.Namespace) -> dict[str, dict]:
    """Where the node's time goes, per configuration (a separate, profiled pass)."""
    profiles = {}
    for side, node in node_configurations(diagnostic=False).items():
        profile = cProfile.Profile()
        work = inputs.work / f"profile-{side}"
        bundle = inputs.bundle(node)
        run_node(side, bundle, inputs.studies, work, args.threads, profile, **node.settings)
        profiles[side] = profile_summary(profile, len(inputs.studies) - 1)
    return profiles


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10, help="the first one is not timed warm")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2048, help="rows (= columns) of each view")
    parser.add_argument("--architecture", default="densenet121")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--rounds", type=int, default=1, help="peer then node, this many times")
    parser.add_argument("--seed", type=int, default=0, help="of the networks' random weights")
    parser.add_argument("--profile", action="store_true", help="also cProfile the node's studies")
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.studies < 2:
        parser.error("--studies must be at least 2: the first study is not a warm one")
    return args


def build_report(
    args: argparse.Namespace,
    results: list[SideResult],
    versions: dict[str, str],
    profiles: dict[str, dict],
) -> dict[str, object]:
    sides = dict.fromkeys(r.side for r in results)
    summaries = {side: summarise([r for r in results if r.side == side]) for side in sides}
    peer = summaries["peer"]
    return {
        "machine": machine_description(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "peer_versions": versions,
        "summaries": summaries,
        "ratios_to_peer": {
            side: {
                stat: round(row[stat] / peer[stat], 2)
                for stat in ("median_seconds", "p90_seconds", "median_cpu_seconds")
            }
            for side, row in summaries.items()
            if side != "peer"
        },
        "rounds": [asdict(r) for r in results],
        "profiles": profiles,
    }


def main() -> None:
    args = parse_args()
    python = ensure_peer_venv(args.peer_venv)
    torch.set_num_threads(args.threads)
    results: list[SideResult] = []
    with tempfile.TemporaryDirectory(prefix="ft-peer-monai-deploy-") as temp:
        work = Path(temp)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))  # before Prefect's import
        inputs = BenchInputs(
            work=work,
            studies_root=work / "studies",
            studies=write_studies(work / "studies", args.studies, args.views, args.rows),
            peer_model=save_peer_model(args.architecture, args.seed, work / "model.ts"),
            node_bundle=save_node_bundle(
                args.architecture, args.image_size, args.seed, work / "bundle"
            ),
            shared_bundle=save_node_bundle(
                args.architecture, args.image_size, args.seed, work / "shared", True
            ),
        )
        bare: list[dict[str, float]] = []
        for number in range(args.rounds):
            round_results, versions, round_bare = run_round(number, python, inputs, args)
            results += round_results
            bare.append(round_bare)
        profiles = profile_node(inputs, args) if args.profile else {}
    report = build_report(args, results, versions, profiles)
    # The network alone in each round: what one forward pass over a study costs on the
    # machine as loaded at that moment, in the peer's form and in the node's.
    report["bare_forward_seconds"] = bare
    title = (
        f"Per study: {args.views} views of {args.rows}x{args.rows}, {args.architecture} at "
        f"{args.image_size} px, {args.threads} torch threads"
    )
    print_table(report["summaries"], title)  # type: ignore[arg-type]
    console.print("the network alone, one forward pass over a study's views (s):", bare)
    for side, profile in profiles.items():
        console.print(f"[bold]{side}[/bold]: where the time goes", profile)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Where the graph runs, and progress while it does.

``ClusterSpec`` says where (the local threaded scheduler, a LocalCluster of processes, an existing
scheduler, or SLURM jobs through dask-jobqueue); ``connect`` opens it and yields a ``Runner``,
which computes dask objects there with progress (rich for local schedulers, futures under
distributed, where dask's ProgressBar shows nothing) and records stage times.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.threaded
from dask.callbacks import Callback

from .buffers import physical_memory
from .errors import ClusterError, ClusterUsageError

# A fused chunk task holds its block with halo, the low-passed and raw blocks, scratch for the
# max filter, noise and factors, and its stacked outputs: about this many padded blocks of
# float32 plus one per output (the low-pass stage's complex slabs need no more).
TASK_BLOCKS = 8
# dask pauses a worker at 80% of its memory limit; leave the rest for the interpreter and buffers.
USABLE_FRACTION = 0.75
LOWPASS_SHARE = 16  # under a memory limit a low-pass block is at most this fraction of it per thread


class _RichCallback(Callback):
    """Task-count progress bar for the local schedulers."""

    def __init__(self, progress, label: str):
        super().__init__()
        self._progress = progress
        self._label = label
        self._task = None

    def _start_state(self, dsk, state):
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._task = self._progress.add_task(self._label, total=max(total, 1))

    def _posttask(self, key, result, dsk, state, worker_id):
        self._progress.advance(self._task)

    def _finish(self, dsk, state, errored):
        if self._task is not None:
            self._progress.update(self._task, completed=self._progress.tasks[self._task].total)


@dataclass
class Runner:
    """Computes dask objects on the threaded scheduler or, given a ``client``, on its cluster,
    with progress on a terminal unless ``quiet``; records stage times."""

    client: object = None
    quiet: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)
    limits: tuple[int | None, int, str] | None = None  # worker memory, threads per worker, where

    def check_memory(self, chunks, halo, n_outputs: int) -> None:
        """Refuse chunks too large for the workers (see :func:`check_task_memory`)."""
        if self.limits is not None:
            check_task_memory(chunks, halo, n_outputs, *self.limits, writes_behind=not self.distributed)

    def fit_chunks(self, settings, n_outputs: int):
        """``settings`` with automatic chunks that fit the workers' memory (see :func:`fitted_chunks`)."""
        if self.limits is None:
            return settings
        return fitted_chunks(settings, n_outputs, *self.limits[:2], writes_behind=not self.distributed)

    @property
    def distributed(self) -> bool:
        """Whether tasks may run in other processes (so no task may write into this one's memory)."""
        return self.client is not None

    @property
    def lowpass_block_bytes(self) -> int:
        """Blocks of the low-pass stage: the default, or under a memory limit small enough that
        each thread's block and its transforms (at most about 5 blocks, and one waiting for the
        background writer) fit a third of it. (Far smaller blocks cut the spilled spectra into
        thousands of tiny chunk files, several times slower to write and read back.)"""
        from .lowpass import TARGET_BLOCK_BYTES

        if self.memory_budget is None:
            return TARGET_BLOCK_BYTES
        return int(max(1 << 20, min(TARGET_BLOCK_BYTES, self.memory_budget // (LOWPASS_SHARE * max(self.limits[1], 1)))))

    @property
    def memory_budget(self) -> int | None:
        """Bytes this process may hold (``--memory-limit`` of a threaded run), else None."""
        if self.client is not None or self.limits is None:
            return None
        return self.limits[0]

    def release_buffers(self) -> None:
        """Free the chunk buffers pooled in this process and, under distributed, in the workers."""
        from .buffers import release_buffers

        release_buffers()
        if self.client is not None:
            self.client.run(release_buffers)

    def describe(self) -> str:
        """Where the work ran, for the log: threads, or the distributed workers (and the SLURM
        jobs they ran in, from each worker's ``SLURM_JOB_ID``)."""
        if self.client is None:
            return f"local threaded scheduler, {dask.config.get('num_workers', None) or os.cpu_count()} thread(s)"
        jobs = self.client.run(os.getenv, "SLURM_JOB_ID")  # os.environ.get would pickle our environment
        threads = sum(w.get("nthreads", 0) for w in self.client.scheduler_info(n_workers=-1).get("workers", {}).values())
        address = self.client.scheduler.address
        protocol = {"tls": "TLS", "tcp": "plain TCP, unencrypted", "inproc": "in this process"}.get(address.split("://")[0], address.split("://")[0])
        text = f"dask scheduler {address} ({protocol}), {len(jobs)} worker(s), {threads} thread(s)"
        ids = sorted({j for j in jobs.values() if j})
        return text + (f", in SLURM job(s) {', '.join(ids)}" if ids else "")

    def _show_progress(self) -> bool:
        return not self.quiet and sys.stderr.isatty()

    def __call__(self, *objs, label: str = "compute"):
        start = time.perf_counter()
        try:
            if self.client is not None:
                return self._distributed(objs, label)
            # the threaded scheduler's function, not its name: the name makes dask import distributed (0.3 s)
            if not self._show_progress():
                return dask.compute(*objs, scheduler=dask.threaded.get)
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
            with progress, _RichCallback(progress, label):
                return dask.compute(*objs, scheduler=dask.threaded.get)
        finally:
            self.timings.append((label, time.perf_counter() - start))

    def _distributed(self, objs, label):
        futures = self.client.compute(list(objs))
        if self._show_progress():
            from distributed import progress

            print(label, file=sys.stderr)
            progress(futures, notebook=False)  # per-task bar from the scheduler's futures
        return tuple(self.client.gather(futures))


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: ``mode`` "local" (threads, or a LocalCluster of ``workers`` processes) or
    "slurm" (``jobs`` fixed SLURM jobs or ``adaptive`` (min, max) from ``cluster_config``); an
    existing scheduler by ``scheduler_address`` or ``scheduler_file`` overrides both.

    Clusters started here talk TLS with credentials made for the run (``tls``; off with
    ``--no-tls``); SLURM workers read theirs from a private folder under ``shared_dir`` (a
    filesystem the jobs share). An existing scheduler is reached with the ``tls_*`` files when
    given, else with the user's dask configuration (``distributed.comm.tls.*``)."""

    mode: str = "local"
    workers: int | None = None
    threads: int | None = None
    memory_limit: str | None = None
    scheduler_address: str | None = None
    scheduler_file: str | None = None
    cluster_config: str | None = None
    jobs: int | None = None
    adaptive: tuple[int, int] | None = None
    dashboard: bool = False
    dashboard_address: str | None = None  # None: 127.0.0.1, a free port
    timeout: float = 30.0
    tls: bool = True
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    shared_dir: str | None = None  # None: the current directory

    def __post_init__(self):
        if self.mode not in ("local", "slurm"):
            raise ClusterError(f"unknown --cluster {self.mode!r} (local or slurm)")
        if self.scheduler_address and self.scheduler_file:
            raise ClusterError("give --scheduler-address or --scheduler-file, not both")
        if self.mode == "slurm" and (self.scheduler_address or self.scheduler_file):
            raise ClusterError("--cluster slurm starts its own scheduler; --scheduler-address/--scheduler-file connect to a running one")
        if self.jobs is not None and self.adaptive is not None:
            raise ClusterError("give --jobs or --adaptive, not both")
        for name in ("workers", "threads", "jobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ClusterError(f"--{name} must be at least 1 (got {value})")
        if self.adaptive is not None and not (0 <= self.adaptive[0] <= self.adaptive[1] and self.adaptive[1] >= 1):
            raise ClusterError(f"--adaptive MIN:MAX needs 0 <= MIN <= MAX, MAX >= 1 (got {self.adaptive[0]}:{self.adaptive[1]})")
        if self.timeout <= 0:
            raise ClusterError("--scheduler-timeout must be positive")
        files = {"--tls-ca-file": self.tls_ca_file, "--tls-cert": self.tls_cert, "--tls-key": self.tls_key}
        given = [flag for flag, value in files.items() if value]
        if given and not self.external:
            raise ClusterError(
                f"{', '.join(given)} are for an existing scheduler (--scheduler-address/--scheduler-file); clusters started here make their own"
            )
        if given and not (self.tls_ca_file and self.tls_cert):
            raise ClusterError(
                "an existing TLS scheduler needs --tls-ca-file and --tls-cert (and --tls-key unless the key is in the certificate file)"
            )
        for flag, value in files.items():
            if value and not Path(value).is_file():
                raise ClusterError(f"{flag} {value}: no such file")
        if self.dashboard_address and not self.dashboard:
            raise ClusterError("--dashboard-address needs --dashboard")

    @property
    def security(self):
        """The distributed ``Security`` of this run's client (None: the dask configuration's)."""
        if not self.tls_ca_file:
            return None
        from distributed import Security

        return Security(tls_ca_file=self.tls_ca_file, tls_client_cert=self.tls_cert, tls_client_key=self.tls_key, require_encryption=True)

    @property
    def started_tls(self) -> bool:
        """Whether a cluster started here (processes or SLURM jobs) uses TLS."""
        return self.tls and not self.external and (self.mode == "slurm" or self.workers is not None)

    @classmethod
    def from_options(
        cls, *, mode: str = "local", cluster_config=None, adaptive: str | None = None, print_job_script: bool = False, **options
    ) -> ClusterSpec:
        """The spec the command line's cluster flags ask for: ``options`` are the fields; unset
        ones (None) come from a local ``cluster_config`` YAML (workers, threads, memory_limit,
        dashboard). Anything that does not fit together is a usage error."""
        try:
            local = load_local_config(cluster_config) if mode == "local" and cluster_config else {}
            for key in ("workers", "threads", "memory_limit", "dashboard"):
                if options.get(key) in (None, False):  # the flag wins over the file
                    options[key] = local.get(key, options.get(key))
            spec = cls(mode=mode, cluster_config=str(cluster_config) if cluster_config else None, adaptive=parse_adaptive(adaptive), **options)
        except ClusterError as exc:
            raise ClusterUsageError(str(exc)) from None
        if (spec.mode == "slurm" or print_job_script) and (cluster_config is None or spec.mode != "slurm"):
            raise ClusterUsageError(
                "--cluster slurm and --print-job-script need --cluster slurm --cluster-config FILE (see cluster_configs/slurm.yaml)"
            )
        return spec

    @property
    def external(self) -> bool:
        return bool(self.scheduler_address or self.scheduler_file)

    @property
    def distributed(self) -> bool:
        """Whether the run goes through a distributed scheduler (anything but local threads)."""
        return self.external or self.mode == "slurm" or self.workers is not None or self.dashboard


def parse_adaptive(text: str | None) -> tuple[int, int] | None:
    """``"MIN:MAX"`` -> (MIN, MAX)."""
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise ClusterError(f"--adaptive takes MIN:MAX job counts, e.g. 1:8 (got {text!r})") from None
    return lo, hi


def parse_memory(text: str | int | float | None) -> int | None:
    """Bytes in a memory size such as ``"4GB"``, ``"3.5 GiB"`` or ``"2000MB"``."""
    if text is None or isinstance(text, int | float):
        return None if text is None else int(text)
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise ClusterError(f"not a memory size: {text!r} (for example 4GB or 3.5GiB)") from None


def task_memory(chunks: tuple[int, int, int], halo: tuple[int, int, int], n_outputs: int) -> int:
    """Bytes one fused chunk task needs at most (see ``TASK_BLOCKS``)."""
    padded = math.prod(c + 2 * h for c, h in zip(chunks, halo)) * 4
    return padded * (TASK_BLOCKS + n_outputs)


def thread_memory(chunks, halo, n_outputs: int, threads_per_worker: int, writes_behind: bool = False) -> float:
    """Bytes each thread of a worker needs: its task, and its share of the one chunk's outputs
    that wait for the background writer (threaded runs, see :class:`occupy_dask.buffers.WriteBehind`)."""
    waiting = 4 * math.prod(chunks) * n_outputs if writes_behind else 0
    return task_memory(chunks, halo, n_outputs) + waiting / max(threads_per_worker, 1)


def fitted_chunks(settings, n_outputs: int, worker_memory: int | None, threads_per_worker: int, writes_behind: bool = False):
    """``settings`` with automatic chunks small enough for ``threads_per_worker`` tasks to fit
    the usable part of ``worker_memory``: the automatic chunks when they fit, else the thickest
    slabs of whole planes (halving, down to the kernel halo or 4 planes), else the largest bars
    of whole rows (E planes x E rows x all columns; each plane of a bar is one contiguous run of
    the file, read and written in one piece; E halving from 256 down to twice the halo or 16),
    else the largest cubes (halving from 256, down to twice the halo or 32) that fit. Chunks
    the user chose, and limits nothing fits (refused by :func:`check_task_memory`), are left as
    they are."""
    from dataclasses import replace

    from .settings import DEFAULT_CHUNK_EDGE

    if not worker_memory or settings.chunk_edge is not None:
        return settings
    per_thread = worker_memory * USABLE_FRACTION / max(threads_per_worker, 1)

    def fits(candidate) -> bool:
        return thread_memory(candidate.chunks, candidate.halo, n_outputs, threads_per_worker, writes_behind) <= per_thread

    if fits(settings):
        return settings
    candidates = []
    planes = settings.chunks[0] // 2 if settings.slabs else 0
    while planes >= max(settings.halo[0], 4):
        candidates.append(replace(settings, fitted_planes=planes))
        planes //= 2
    edge = min(DEFAULT_CHUNK_EDGE, max(settings.shape[:2]))
    while edge >= max(2 * max(settings.halo[:2]), 16):
        candidates.append(replace(settings, fitted_bar=edge))
        edge //= 2
    edge = min(DEFAULT_CHUNK_EDGE, max(settings.shape)) // 2
    while edge >= max(2 * max(settings.halo), 32):
        candidates.append(replace(settings, fitted_edge=edge))
        edge //= 2
    return next((candidate for candidate in candidates if fits(candidate)), settings)


def check_task_memory(
    chunks, halo, n_outputs: int, worker_memory: int | None, threads_per_worker: int, where: str, writes_behind: bool = False
) -> None:
    """Refuse, before running, chunks whose tasks cannot all fit a worker's memory limit."""
    if not worker_memory:
        return
    need = thread_memory(chunks, halo, n_outputs, threads_per_worker, writes_behind)
    per_thread = worker_memory * USABLE_FRACTION / max(threads_per_worker, 1)
    if need > per_thread:
        gib = 1 << 30
        raise ClusterError(
            f"chunks of {'x'.join(map(str, chunks))} voxels need about {need / gib:.2f} GiB per task, but {where} "
            f"({worker_memory / gib:.2f} GiB per worker, {threads_per_worker} thread(s) each) leaves "
            f"{per_thread / gib:.2f} GiB per task: use smaller --chunks, fewer threads per worker or more memory"
        )


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ClusterError(f"{path}: cannot read the cluster configuration ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ClusterError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return content if isinstance(content, dict) else {}


LOCAL_KEYS = {"workers": int, "threads": int, "memory-limit": str, "dashboard": bool}


def load_local_config(path: str | os.PathLike) -> dict:
    """The ``occupy-dask: local:`` mapping (workers, threads, memory-limit, dashboard) of a
    configuration file, as ``ClusterSpec`` keywords; unset keys are left out."""
    path = Path(path)
    local = _read_yaml(path).get("occupy-dask", {}).get("local")
    if not isinstance(local, dict):
        raise ClusterError(f"{path}: no 'occupy-dask: local:' section (see cluster_configs/local.yaml)")
    unknown = set(local) - set(LOCAL_KEYS)
    if unknown:
        raise ClusterError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(LOCAL_KEYS)})")
    try:
        return {key.replace("-", "_"): LOCAL_KEYS[key](value) for key, value in local.items() if value is not None}
    except (TypeError, ValueError) as exc:
        raise ClusterError(f"{path}: {exc}") from None


def load_slurm_config(path: str | os.PathLike) -> dict:
    """The ``jobqueue: slurm:`` mapping of a dask-jobqueue configuration file."""
    path = Path(path)
    content = _read_yaml(path)
    slurm = content.get("jobqueue", {}).get("slurm") if isinstance(content.get("jobqueue"), dict) else None
    if not isinstance(slurm, dict):
        raise ClusterError(f"{path}: no 'jobqueue: slurm:' section (see cluster_configs/slurm.yaml)")
    for key in ("cores", "memory"):
        if slurm.get(key) in (None, ""):
            raise ClusterError(f"{path}: jobqueue.slurm.{key} must be set")
    return slurm


def _slurm_cluster(spec: ClusterSpec, loopback: bool = False, security=None, shared_dir: str | None = None):
    """A dask-jobqueue SLURMCluster from the config file's keys (as keyword arguments, so that
    the job script renders the same later); dask-jobqueue's defaults fill the rest. With
    ``security`` the scheduler and workers talk TLS, the workers' credentials written into
    ``shared_dir``. With ``loopback`` (only rendering the job script) its scheduler listens on
    127.0.0.1 only."""
    from dask_jobqueue import SLURMCluster

    config = load_slurm_config(spec.cluster_config)
    kwargs = {("job_name" if key == "name" else key.replace("-", "_")): value for key, value in config.items() if value is not None}
    kwargs.setdefault("python", sys.executable)
    dashboard = (spec.dashboard_address or "127.0.0.1:0") if spec.dashboard else None
    kwargs["scheduler_options"] = {**kwargs.get("scheduler_options", {}), "dashboard_address": dashboard}
    if security is not None:
        kwargs.update(security=security, protocol="tls://", shared_temp_directory=shared_dir)
    if loopback:
        kwargs["scheduler_options"] = {**kwargs.get("scheduler_options", {}), "interface": None, "host": "127.0.0.1"}
    try:
        return SLURMCluster(**kwargs)
    except (ValueError, TypeError, OSError) as exc:
        raise ClusterError(f"{spec.cluster_config}: cannot start a SLURM cluster ({exc})") from None


def slurm_worker_memory(spec: ClusterSpec) -> tuple[int, int]:
    """(memory per worker process in bytes, threads per process) that the SLURM config gives."""
    config = load_slurm_config(spec.cluster_config)
    processes = int(config.get("processes") or 1)
    cores = int(config["cores"])
    return parse_memory(config["memory"]) // processes, max(cores // processes, 1)


def job_script(spec: ClusterSpec) -> str:
    """The sbatch script each SLURM worker job would run (its scheduler address is a placeholder
    of this short-lived local scheduler)."""
    cluster = _slurm_cluster(spec, loopback=True)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def worker_limits(spec: ClusterSpec, client=None) -> tuple[int | None, int, str]:
    """(memory per worker, threads per worker, a description) for the memory check."""
    if client is not None:
        workers = client.scheduler_info(n_workers=-1).get("workers", {}) if spec.external else {}
        if workers:
            memory = min((w.get("memory_limit") or 0) for w in workers.values()) or None
            threads = max(w.get("nthreads", 1) for w in workers.values())
            return memory, threads, "the scheduler's workers"
    if spec.mode == "slurm":
        memory, threads = slurm_worker_memory(spec)
        return memory, threads, f"the SLURM jobs of {spec.cluster_config}"
    threads = _local_threads(spec)
    if spec.workers is not None:
        total = parse_memory(spec.memory_limit) or physical_memory() // spec.workers
        return total, threads, f"{spec.workers} local worker process(es)"
    return parse_memory(spec.memory_limit) or physical_memory(), threads, f"this machine with {threads} thread(s)"


def _local_threads(spec: ClusterSpec) -> int:
    """Threads per worker of a local run: ``--threads``, else every core shared among the workers."""
    return spec.threads or max((os.cpu_count() or 1) // (spec.workers or 1), 1)


@contextmanager
def connect(spec: ClusterSpec, quiet: bool = False):
    """Open the cluster of ``spec`` (closing what it started on exit, also when setting it up
    fails part way, so no SLURM job outlives the run) and yield a ``Runner``."""
    if not spec.distributed:
        with dask.config.set(num_workers=spec.threads) if spec.threads else nullcontext():
            yield Runner(quiet=quiet, limits=worker_limits(spec))
        return
    from distributed import Client

    with ExitStack() as stack:  # closes the client, then the cluster
        if spec.external:
            target = spec.scheduler_address or spec.scheduler_file
            if spec.scheduler_file and not Path(spec.scheduler_file).exists():
                raise ClusterError(f"{spec.scheduler_file}: no such scheduler file")
            try:
                if spec.scheduler_file:
                    client = Client(scheduler_file=spec.scheduler_file, timeout=spec.timeout, security=spec.security)
                else:
                    client = Client(spec.scheduler_address, timeout=spec.timeout, security=spec.security)
            except (OSError, TimeoutError) as exc:
                raise ClusterError(f"cannot reach the dask scheduler at {target} within {spec.timeout:g} s ({type(exc).__name__})") from None
            except (TypeError, ValueError) as exc:  # a tls:// address without credentials, or a bad one
                raise ClusterError(f"cannot connect to the dask scheduler at {target}: {exc} (give --tls-ca-file, --tls-cert, --tls-key)") from None
            stack.enter_context(client)
        elif spec.mode == "slurm":
            security, shared = None, None
            if spec.tls:  # the workers' credentials: files in a folder only this user can read, removed afterwards
                from distributed import Security

                security = Security.temporary()
                shared = tempfile.mkdtemp(prefix=".occupy_dask_tls_", dir=spec.shared_dir or os.getcwd())
                stack.callback(shutil.rmtree, shared, ignore_errors=True)
            cluster = stack.enter_context(_slurm_cluster(spec, security=security, shared_dir=shared))
            if spec.adaptive is not None:
                cluster.adapt(minimum_jobs=spec.adaptive[0], maximum_jobs=spec.adaptive[1])
            else:
                cluster.scale(jobs=spec.jobs or 1)
            client = stack.enter_context(Client(cluster))
            if spec.adaptive is None:  # start with every asked-for job if the queue allows it soon
                processes = int(load_slurm_config(spec.cluster_config).get("processes") or 1)
                _wait_for_slurm_workers(client, (spec.jobs or 1) * processes, spec.timeout, quiet)
        else:
            from distributed import LocalCluster

            processes = spec.workers is not None
            network = {}
            if processes:  # threads talk in-process; processes over 127.0.0.1, with TLS unless --no-tls
                network = {"host": "127.0.0.1"}
                if spec.tls:
                    from distributed import Security

                    network.update(protocol="tls://", security=Security.temporary())
            cluster = LocalCluster(
                n_workers=spec.workers or 1,
                threads_per_worker=_local_threads(spec),
                processes=processes,
                memory_limit=spec.memory_limit or ("auto" if processes else 0),
                dashboard_address=(spec.dashboard_address or "127.0.0.1:0") if spec.dashboard else None,
                **network,
            )
            stack.enter_context(cluster)
            client = stack.enter_context(Client(cluster, security=network.get("security")))
        if spec.dashboard and not quiet:
            port = client.scheduler_info().get("services", {}).get("dashboard")
            local = not spec.external and not spec.dashboard_address  # served on 127.0.0.1 only
            link = f"http://127.0.0.1:{port}/status" if local and port else client.dashboard_link
            print(f"dask dashboard: {link}", file=sys.stderr)
        yield Runner(client=client, quiet=quiet, limits=worker_limits(spec, client))


def _wait_for_slurm_workers(client, expected: int, timeout: float, quiet: bool) -> None:
    if not quiet:
        print(f"waiting up to {timeout:g} s for {expected} SLURM worker(s)", file=sys.stderr)
    try:
        client.wait_for_workers(expected, timeout=timeout)
    except TimeoutError:
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if not quiet:
            print(f"{n} of {expected} SLURM worker(s) running; starting anyway, the rest join when their jobs start", file=sys.stderr)

"""Small helpers: seeding, device resolution, JSON sanitising, plain-text and Markdown tables."""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import time
import warnings
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from mtl_bench.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA).  Called at the start of every job, because the
    basic and joblib launchers run several jobs in one process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cgroup_cpu_quota() -> int | None:
    """CPUs granted by a cgroup CPU quota (containers, SLURM's cgroup plugin), rounded up; ``None`` without one."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()[:2]),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")])):
        text = _read(path)
        if text is None:
            continue
        quota, period = parse(text)
        if quota in ("max", "-1") or not period:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def allowed_cpus() -> set[int]:
    """The CPU ids this process may run on (its affinity mask: ``taskset``, SLURM's CPU binding)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def available_cpus() -> int:
    """How many CPUs this process may use: its affinity mask, capped by a cgroup quota (containers, SLURM cgroups)."""
    n = len(allowed_cpus())
    quota = _cgroup_cpu_quota()
    return max(1, min(n, quota) if quota else n)


def _cpu_times() -> dict[int, tuple[int, int]]:
    """``{cpu: (busy jiffies, total jiffies)}`` from ``/proc/stat`` (empty where there is none)."""
    text = _read("/proc/stat") or ""
    out = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in fields[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def busy_cpus(cpus: set[int], interval_s: float = 0.2) -> float:
    """How many of ``cpus`` other work keeps busy: the summed non-idle share of each over ``interval_s`` (this process
    sleeps meanwhile), from ``/proc/stat``; 0 where that is unavailable."""
    before = _cpu_times()
    if not before:
        return 0.0
    time.sleep(interval_s)
    after = _cpu_times()
    busy = 0.0
    for c in cpus & before.keys() & after.keys():
        d_busy, d_total = after[c][0] - before[c][0], after[c][1] - before[c][1]
        busy += d_busy / d_total if d_total > 0 else 0.0
    return busy


def resolve_num_threads(requested: int | None) -> tuple[int, str]:
    """Intra-op threads for a run and where the number came from: ``trainer.num_threads`` when set; else
    ``OMP_NUM_THREADS`` (a user's choice, and what the joblib launcher's workers get: cores // jobs); else
    ``SLURM_CPUS_PER_TASK``; else the CPUs available to the process that other work leaves idle right now (at least
    one).  Never torch's count of the machine's cores: with a core busy elsewhere, OpenMP threads waiting for each
    other made a small run up to 20x slower (docs/benchmarks.md)."""
    if requested:
        return int(requested), "trainer.num_threads"
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), available_cpus()), var
    n = available_cpus()
    busy = busy_cpus(allowed_cpus()) if n > 1 else 0.0
    idle = max(1, n - round(busy))
    return idle, f"idle CPUs: {n} available, {busy:.1f} busy with other work"


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def resolve_device(spec: str) -> torch.device:
    if not _DEVICE_RE.match(spec):
        raise ConfigError(f"trainer.device='{spec}' is invalid; choose one of auto, cpu, cuda, cuda:<index>")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={spec} but no CUDA device is available; use trainer.device=cpu or auto")
        if ":" in spec and int(spec.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={spec} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device=mps but MPS is not available; use trainer.device=cpu or auto")
    return torch.device(spec)


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)


def host_to_device(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Copy a host tensor to ``like``'s device and dtype without blocking the host: a pageable host→GPU
    copy waits for all queued GPU work, which stalls the pipeline once per step."""
    if like.device.type == "cuda":
        t = t.pin_memory().to(like.device, non_blocking=True)
    return t.to(device=like.device, dtype=like.dtype)


def to_jsonable(value: Any) -> Any:
    """Recursively convert tensors/numpy scalars to Python numbers and non-finite floats to ``None``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for comparing configs key by key)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten_dict(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".4g") -> str:
    """A fixed-width plain-text table (numbers right-aligned)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else format(v, floatfmt)
        return "-" if v is None else str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in body)])


_MD_ALIGN = {"l": "---", "r": "---:"}


def markdown_table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table (``| a | b |`` lines; cells through ``str``, ``|`` escaped, newlines as spaces); ``align``: one
    letter per column, ``l`` (left) or ``r`` (right, for numbers); default: all left."""
    align = "l" * len(headers) if align is None else align
    if len(align) != len(headers) or set(align) - set(_MD_ALIGN):
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(headers)} columns), got {align!r}")
    body = [headers, *rows]
    for row in body:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells, the header {len(headers)}: {list(row)}")
    lines = ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in body]
    lines.insert(1, "|" + "|".join(_MD_ALIGN[a] for a in align) + "|")
    return "\n".join(lines)


def registrar(table: dict[str, type], kind: str) -> Any:
    """``register(name)`` for one registry (combiners, modes): a class decorator that sets ``cls.name`` and enters the
    class in ``table``; a name registered twice is an error."""

    def register(name: str) -> Any:
        def deco(cls: type) -> type:
            if name in table:
                raise ValueError(f"{kind} '{name}' registered twice")
            cls.name = name
            table[name] = cls
            return cls

        return deco

    return register


@contextlib.contextmanager
def pyg_import_quietly() -> Iterator[None]:
    """Import torch_geometric without its FutureWarning about the deprecated ``torch.jit.script`` (raised at import
    by PyG itself, nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated", category=FutureWarning)
        yield

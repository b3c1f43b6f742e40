"""Run the benchmark suite: kitaru side by side with its peers, and print one table.

    uv run python benchmarks/run.py            # full run
    uv run python benchmarks/run.py --quick    # smaller workloads, a smoke run
    uv run python benchmarks/run.py --only kitaru,dbos

Each peer gets its own virtualenv under ``benchmarks/.peers/<peer>/`` (made with ``uv venv`` and
``uv pip install -r benchmarks/peers/requirements-<peer>.txt``; kept while the requirements and
the interpreter are unchanged). kitaru runs in this interpreter's environment, with a fresh
``KITARU_HOME``. Every bench script prints one JSON object; the table is printed on stdout and
the raw results are written to ``benchmarks/results/latest.json``.

A peer that fails to install or run shows ``error`` in its column, with the reason on stderr.
These are benchmarks, not tests: the exit status is 0 whatever the numbers are.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
VENVS_DIR = HERE / ".peers"
RESULTS_DIR = HERE / "results"

sys.path.insert(0, str(HERE))
import _benchlib as bl  # noqa: E402

# Targets from DESIGN.md ("Performance targets"), in ms.
TARGETS: dict[str, float] = {
    "checkpoint_overhead_ms": 0.1,
    "checkpoint_1mb_ms": 3,
    "empty_flow_ms": 1,
    "import_ms": 100,
    "cli_help_ms": 300,
    "wait_answer_to_running_ms": 50,
    "resume_1000_ms": 100,
    "concurrent_1000_async_ms": 0.05,
}

LABELS: dict[str, str] = {
    "checkpoint_overhead_ms": "overhead / sequential checkpoint",
    "checkpoint_1mb_ms": "checkpoint returning 1 MiB",
    "empty_flow_ms": "empty flow, start -> result",
    "import_ms": "import (in-process)",
    "cli_help_ms": "`kitaru --help` (process)",
    "wait_answer_to_running_ms": "answer a wait -> running",
    "resume_1000_ms": "resume past 1000 checkpoints",
    "concurrent_1000_async_ms": "overhead / concurrent async ckpt",
}


@dataclass
class System:
    key: str
    title: str
    script: Path
    requirements: Path | None = None  # None: runs in this environment

    @property
    def venv(self) -> Path:
        return VENVS_DIR / self.key


SYSTEMS: dict[str, System] = {
    "kitaru": System("kitaru", "kitaru", HERE / "kitaru_bench.py"),
    "dbos": System("dbos", "DBOS", PEERS_DIR / "dbos_bench.py", PEERS_DIR / "requirements-dbos.txt"),
    "langgraph": System(
        "langgraph",
        "LangGraph",
        PEERS_DIR / "langgraph_bench.py",
        PEERS_DIR / "requirements-langgraph.txt",
    ),
}


@dataclass
class Outcome:
    system: System
    data: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    stderr_tail: list[str] = field(default_factory=list)


def say(msg: str) -> None:
    print(f"[run] {msg}", file=sys.stderr, flush=True)


# --- peer virtualenvs -------------------------------------------------------------------------


def _python_for_venvs() -> str:
    """The interpreter peers are installed for: the same one kitaru runs on."""
    return sys.executable


def _requirements_hash(system: System) -> str:
    assert system.requirements is not None
    h = hashlib.sha256()
    h.update(system.requirements.read_bytes())
    h.update(f"\npython={platform.python_implementation()}-{platform.python_version()}".encode())
    return h.hexdigest()


def venv_python(system: System) -> Path:
    return system.venv / "bin" / "python"


def ensure_venv(system: System, reinstall: bool = False) -> Path:
    """Make (or reuse) the peer's virtualenv; return its interpreter. Raises on failure."""
    # The checkout's own wrapper when uv is not on PATH: it installs a private uv (./uvw).
    uv = shutil.which("uv") or str(Path(__file__).resolve().parent.parent / "uvw")
    python = venv_python(system)
    stamp = system.venv / ".requirements.sha256"
    want = _requirements_hash(system)
    if not reinstall and python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        say(f"{system.key}: virtualenv up to date ({system.venv})")
        return python
    say(f"{system.key}: building virtualenv {system.venv}")
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    steps = [
        [uv, "venv", "--clear", "--quiet", "--python", _python_for_venvs(), str(system.venv)],
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--compile-bytecode",
            "--python",
            str(python),
            "-r",
            str(system.requirements),
        ],
    ]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
        if proc.returncode != 0:
            if stamp.exists():
                stamp.unlink()
            raise RuntimeError(
                f"`{' '.join(argv[:3])} ...` failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-3000:]}"
            )
    stamp.write_text(want + "\n")
    return python


# --- running one bench script -----------------------------------------------------------------


def run_bench(
    system: System,
    python: str,
    args: list[str],
    env: dict[str, str],
    timeout: float,
) -> Outcome:
    out = Outcome(system)
    argv = [python, str(system.script), *args]
    say(f"{system.key}: {' '.join(argv)}")
    t0 = bl.now()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(HERE.parent),
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            del tail[:-60]
            print(f"  {system.key} | {line}", file=sys.stderr, flush=True)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        assert proc.stdout is not None
        stdout_box: list[bytes] = []
        reader = threading.Thread(target=lambda: stdout_box.append(proc.stdout.read()), daemon=True)
        reader.start()
        proc.wait(timeout=timeout)
        reader.join(10)
        stdout = stdout_box[0] if stdout_box else b""
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        out.error = f"timed out after {timeout:.0f} s"
        stdout = b""
    t.join(10)
    out.seconds = bl.now() - t0
    out.stderr_tail = tail
    if out.error is None:
        text = stdout.decode(errors="replace").strip()
        obj = None
        for line in reversed(text.splitlines()):
            try:
                obj = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
        if proc.returncode != 0:
            out.error = f"exited with status {proc.returncode}"
        elif not isinstance(obj, dict) or "results" not in obj:
            out.error = "printed no JSON result object"
        else:
            out.data = obj
    if out.error:
        last = next((ln.strip() for ln in reversed(tail) if ln.strip()), "")
        if last:
            out.error += f": {last[-500:]}"
        say(f"{system.key}: ERROR: {out.error} (its full stderr is above)")
    return out


# --- the table ---------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.01:
        return f"{v:.3f}"
    return f"{v:.4f}"


def build_table(outcomes: dict[str, Outcome], quick: bool) -> str:
    columns = ["kitaru", "dbos", "langgraph"]
    header = ["measure (ms)", "target", "kitaru", "DBOS", "LangGraph", "kitaru vs best peer"]
    rows: list[list[str]] = []
    over_target = False
    for key in bl.MEASURES:
        row = [LABELS[key], f"<= {_fmt(TARGETS[key])}"]
        values: dict[str, float | None] = {}
        for col in columns:
            o = outcomes.get(col)
            if o is None:
                row.append("(skipped)")
                values[col] = None
            elif o.error or o.data is None:
                row.append("error")
                values[col] = None
            else:
                v = o.data["results"].get(key)
                values[col] = v
                cell = _fmt(v)
                if col == "kitaru" and v is not None and v > TARGETS[key]:
                    cell += " !"
                    over_target = True
                row.append(cell)
        k = values.get("kitaru")
        peers = [(values[c], SYSTEMS[c].title) for c in columns[1:] if values.get(c) is not None]
        if k is not None and peers:
            best, who = min(peers)
            if best > 0:
                ratio = k / best
                row.append(f"{ratio:.2f}x vs {who}")
            else:
                row.append(f"- ({who} <= 0)")
        else:
            row.append("-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return " | ".join(parts)

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    notes = ["ratio = kitaru time / best peer time (below 1: kitaru is faster)."]
    if over_target:
        notes.append("'!' = kitaru is over its target.")
    notes.append("'-' = not measured (kitaru-only measure, or not supported by that peer).")
    if quick:
        notes.append("QUICK RUN: smaller workloads (N=100 etc.); numbers are indicative only.")
    versions = []
    for col in columns:
        o = outcomes.get(col)
        if o and o.data:
            versions.append(f"{SYSTEMS[col].title} {o.data.get('version')}")
    if versions:
        notes.append("versions: " + ", ".join(versions))
    return "\n".join([*out, "", *notes])


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated systems to run (default: all of kitaru,dbos,langgraph)",
    )
    p.add_argument("--measures", default="", help="comma-separated subset of measure keys (default: all)")
    p.add_argument("--reinstall", action="store_true", help="rebuild the peers' virtualenvs first")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per bench script")
    p.add_argument(
        "--kitaru-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the kitaru run (repeatable), e.g. KITARU_SQLITE_SYNC=FULL "
        "to give kitaru's store an fsync per commit like the peers' defaults",
    )
    p.add_argument(
        "--kitaru-postgres",
        action="store_true",
        help="run kitaru with its state in PostgreSQL: a throwaway local server is started "
        "(tests/_services/postgres.py; needs Debian's postgresql package) and stopped afterwards",
    )
    p.add_argument(
        "--kitaru-artifacts",
        choices=["s3", "gcs", "azure"],
        help="run kitaru with its artifacts in an object store on its local emulator (moto, "
        "fake-gcs-server or Azurite, started with tests/_services/ and stopped afterwards)",
    )
    p.add_argument(
        "--output",
        default=str(RESULTS_DIR / "latest.json"),
        help="where to write the raw results (default: benchmarks/results/latest.json)",
    )
    return p.parse_args(argv)


def _start_emulator(kind: str) -> tuple[Any, str, dict[str, Any]]:
    """Start an object-store emulator with the tests' helpers; a fresh bucket, its URI, options."""
    sys.path.insert(0, str(HERE.parent))
    if kind == "s3":
        from tests._services.s3 import MotoServer

        s3 = MotoServer().start()
        return s3, f"s3://{s3.create_bucket()}/bench", s3.options()
    if kind == "gcs":
        from tests._services.gcs import FakeGcsServer, fake_gcs_binary

        binary = fake_gcs_binary()
        if binary is None:
            raise SystemExit("fake-gcs-server is not installed: uv sync")
        gcs = FakeGcsServer(binary).start()
        return gcs, f"gs://{gcs.create_bucket()}/bench", gcs.options()
    from tests._services.azure import Azurite, azurite_binary

    binary = azurite_binary()
    if binary is None:
        raise SystemExit("Azurite is not installed: npm ci --prefix .ci")
    az = Azurite(binary).start()
    return az, f"az://{az.create_container()}/bench", az.options()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [s.strip().lower() for s in args.only.split(",") if s.strip()] or list(SYSTEMS)
    unknown = [s for s in only if s not in SYSTEMS]
    if unknown:
        print(f"unknown system(s): {', '.join(unknown)}; known: {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    unknown_m = [m for m in args.measures.split(",") if m.strip() and m.strip() not in bl.MEASURES]
    if unknown_m:
        print(f"unknown measure(s): {', '.join(unknown_m)}", file=sys.stderr)
        return 2
    bench_args = (["--quick"] if args.quick else []) + (
        ["--measures", args.measures] if args.measures else []
    )

    extra_kitaru_env: dict[str, str] = {}
    for item in args.kitaru_env:
        k, sep, v = item.partition("=")
        if not sep or not k:
            print(f"--kitaru-env wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        extra_kitaru_env[k] = v

    outcomes: dict[str, Outcome] = {}
    scratch = Path(tempfile.mkdtemp(prefix="kitaru-bench-run-"))
    cluster = None
    emulator: Any = None
    try:
        if args.kitaru_postgres and "kitaru" in only:
            sys.path.insert(0, str(HERE.parent))
            from tests._services.postgres import PostgresCluster

            cluster = PostgresCluster.launch()
            extra_kitaru_env["KITARU_BENCH_STATE"] = cluster.dsn(cluster.create_database("kitaru_bench"))
            say(f"kitaru: state in PostgreSQL at {extra_kitaru_env['KITARU_BENCH_STATE']}")
        if args.kitaru_artifacts and "kitaru" in only:
            emulator, uri, options = _start_emulator(args.kitaru_artifacts)
            extra_kitaru_env["KITARU_BENCH_ARTIFACTS"] = uri
            extra_kitaru_env["KITARU_BENCH_ARTIFACT_OPTIONS"] = json.dumps(options)
            say(f"kitaru: artifacts in {uri} ({args.kitaru_artifacts} emulator)")
        for key in SYSTEMS:  # fixed order: kitaru, then the peers
            if key not in only:
                continue
            system = SYSTEMS[key]
            env = dict(os.environ)
            work = scratch / key
            work.mkdir()
            if system.requirements is None:
                python = sys.executable
                env["KITARU_HOME"] = str(work)
                env.update(extra_kitaru_env)
            else:
                try:
                    python = str(ensure_venv(system, reinstall=args.reinstall))
                except Exception as exc:
                    outcomes[key] = Outcome(system, error=f"install failed: {exc}")
                    say(f"{key}: ERROR: install failed: {exc}")
                    continue
                env[f"BENCH_{key.upper()}_DIR"] = str(work)
                env.pop("VIRTUAL_ENV", None)
            outcomes[key] = run_bench(system, python, bench_args, env, args.timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if cluster is not None:
            cluster.destroy()
        if emulator is not None:
            emulator.stop()

    table = build_table(outcomes, args.quick)
    print(table, flush=True)

    report = {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "targets_ms": TARGETS,
        "kitaru_env": extra_kitaru_env,
        "systems": {
            key: {
                "ok": o.error is None,
                "error": o.error,
                "seconds": round(o.seconds, 1),
                **(o.data or {}),
            }
            for key, o in outcomes.items()
        },
        "table": table.splitlines(),
    }
    try:
        out_path = Path(args.output)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {out_path}")
    except OSError as exc:
        say(f"could not write {args.output}: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

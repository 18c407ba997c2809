"""Run the platform benchmark (see the package's docstring) and write its JSON and Markdown."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.platform import calibrate, report, scenarios
from bench.platform.stack import SERVICES, Baseline, Stack, ceiling_server, rss_mb
from scripts.samples import make_audio

RESULTS = Path(__file__).resolve().parents[1] / "results"
SCENARIOS = ("calibration", "ceiling", "gateway", "pool", "pipeline", "memory")
#: The scenarios that need the gateway and the relay running.
GATEWAY_SCENARIOS = {"gateway", "pool", "pipeline", "memory"}
WARM_UP_JOBS = 20


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.platform", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="jobs of the pipeline, each system")
    parser.add_argument("--soak", type=int, default=2000, help="jobs of the soak (the issue asks 20,000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each HTTP measurement")
    parser.add_argument("--rate", type=float, default=400.0, help="fixed rate of the JSON endpoints, per s")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections for JSON endpoints")
    parser.add_argument("--submitters", type=int, default=32, help="submissions in flight in the pipeline")
    parser.add_argument(
        "--paced-rates",
        type=float,
        nargs="*",
        default=[20.0, 200.0],
        help="job rates (per s) at which the pipeline is also run on a fixed timetable, each system",
    )
    parser.add_argument("--paced-s", type=float, default=10.0, help="seconds of each paced pipeline run")
    parser.add_argument("--pool-concurrency", type=int, default=500)
    parser.add_argument(
        "--audio-processes",
        type=int,
        default=2,
        help="processes of the audio service (replicas) in the pipeline; Celery's prefork pool runs 2",
    )
    parser.add_argument(
        "--profile", action=argparse.BooleanOptionalAction, default=True, help="py-spy the gateway"
    )
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    return parser.parse_args()


@dataclass
class Run:
    """One run of the benchmark: its options, its figures so far, and the stack under test."""

    args: argparse.Namespace
    results: dict[str, Any]
    stack: Stack
    work: Path
    wav: Path
    file_id: str = ""
    job_id: str = ""
    idle: dict[str, float] = field(default_factory=dict)

    def save(self) -> None:
        self.results["meta"]["load_at_end"] = load()
        (RESULTS / "platform.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    def http(self) -> None:
        """Scenarios 1, the calibration, 2 and 5, with the workers not started (their queues purged
        afterwards); the gateway and the relay start only for a scenario that needs them."""
        args, results = self.args, self.results
        ceiling = results.get("ceiling", {}).get("bare FastAPI GET envelope", {})
        if "ceiling" in args.only:
            with ceiling_server() as url:
                results["ceiling"] = scenarios.ceiling(
                    url, duration_s=args.duration, connections=args.connections
                )
            ceiling = results["ceiling"]["bare FastAPI GET envelope"]
            self.save()
        if "calibration" in args.only:
            results["calibration"] = calibrate.calibration(
                self.stack,
                duration_s=args.duration,
                connections=args.connections,
                uvloop_rps=ceiling["rps"] if "ceiling" in args.only else None,
            )
            self.save()
        if not GATEWAY_SCENARIOS & set(args.only):
            return
        self.stack.start("gateway", "relay")
        time.sleep(3)
        self.idle = self.stack.rss()
        self.file_id, self.job_id = asyncio.run(scenarios.seed(self.stack, self.wav))
        if "gateway" in args.only:
            results["gateway"] = asyncio.run(
                scenarios.gateway(
                    self.stack,
                    file_id=self.file_id,
                    job_id=self.job_id,
                    duration_s=args.duration,
                    rate=args.rate,
                    ceiling_rps=float(ceiling.get("rps", 0.0)),
                    profile_dir=RESULTS if args.profile else None,
                )
            )
            self.save()
        if "pool" in args.only:
            results["pool"] = asyncio.run(
                scenarios.pool_stress(
                    self.stack,
                    file_id=self.file_id,
                    job_id=self.job_id,
                    concurrency=args.pool_concurrency,
                    rounds=2,
                )
            )
            self.save()
        self.stack.purge_work_queues()

    def pipeline(self) -> None:
        """Scenario 3 for both systems, and the memory figures taken meanwhile (scenario 4, first part)."""
        args, stack = self.args, self.stack
        replicas = [f"audio-{n}" for n in range(2, args.audio_processes + 1)]
        stack.start(*SERVICES, *replicas)
        time.sleep(3)
        self.idle |= {name: mb for name, mb in stack.rss().items() if name in (*SERVICES, *replicas)}
        memory: dict[str, Any] = {"idle_mb": self.idle}
        asyncio.run(
            scenarios.pipeline_ours(
                stack, file_id=self.file_id, jobs=WARM_UP_JOBS, concurrency=4, label="warm-up"
            )
        )
        ours, memory["peak_under_pipeline_mb"] = asyncio.run(
            scenarios.pipeline_with_memory(
                lambda: scenarios.pipeline_ours(
                    stack, file_id=self.file_id, jobs=args.jobs, concurrency=args.submitters
                ),
                stack.pids(),
                servers=stack.server_pids(),
            )
        )
        memory["after_pipeline_mb"] = stack.rss()
        paced_ours = {
            rate: asyncio.run(
                scenarios.pipeline_ours(
                    stack,
                    file_id=self.file_id,
                    jobs=round(rate * args.paced_s),
                    concurrency=args.submitters,
                    label=f"{rate:g}/s",
                    rate=rate,
                )
            )
            for rate in args.paced_rates
        }
        (self.work / "celery").mkdir()
        with Baseline(self.work / "celery") as baseline:
            memory["celery_idle_mb"] = {name: rss_mb(pid) for name, pid in baseline.pids().items()}
            asyncio.run(scenarios.pipeline_celery(baseline, wav=self.wav, jobs=WARM_UP_JOBS, concurrency=4))
            celery, memory["celery_peak_mb"] = asyncio.run(
                scenarios.pipeline_with_memory(
                    lambda: scenarios.pipeline_celery(
                        baseline, wav=self.wav, jobs=args.jobs, concurrency=args.submitters
                    ),
                    baseline.pids(),
                )
            )
            paced_celery = {
                rate: asyncio.run(
                    scenarios.pipeline_celery(
                        baseline,
                        wav=self.wav,
                        jobs=round(rate * args.paced_s),
                        concurrency=args.submitters,
                        rate=rate,
                        label=f"celery {rate:g}/s",
                    )
                )
                for rate in args.paced_rates
            }
            plain = None
            if "calibration" in args.only:
                plain, _ = asyncio.run(
                    scenarios.pipeline_with_memory(
                        lambda: scenarios.pipeline_celery(
                            baseline, wav=self.wav, jobs=args.jobs, concurrency=args.submitters, plain=True
                        ),
                        baseline.pids(),
                    )
                )
        pipeline = {
            "medialens": ours,
            "celery": celery,
            "jobs_per_s_ratio": round(ours["jobs_per_s"] / celery["jobs_per_s"], 2),
            "p99_ratio": round(ours["p99_s"] / celery["p99_s"], 2),
        }
        print(
            f"pipeline ratio: jobs/s x{pipeline['jobs_per_s_ratio']} p99 x{pipeline['p99_ratio']} "
            "(MediaLens / Celery)",
            flush=True,
        )
        pipeline["paced"] = {
            f"{rate:g}": {
                "medialens": paced_ours[rate],
                "celery": paced_celery[rate],
                "p50_ratio": _ratio(paced_ours[rate]["p50_s"], paced_celery[rate]["p50_s"]),
                "p99_ratio": _ratio(paced_ours[rate]["p99_s"], paced_celery[rate]["p99_s"]),
            }
            for rate in args.paced_rates
        }
        self.results["pipeline"] = pipeline
        self.results["memory"] = memory
        if plain is not None:
            pipeline["celery_plain_probe"] = plain
            pipeline["jobs_per_s_ratio_to_plain"] = round(ours["jobs_per_s"] / plain["jobs_per_s"], 2)
            calibrate.with_celery(self.results["calibration"], celery, plain=plain)
        self.save()

    def soak(self) -> None:
        """Scenario 4, second part: M more jobs, then memory and connections against before."""
        args, stack, memory = self.args, self.stack, self.results["memory"]
        memory["connections_before_soak"] = asyncio.run(stack.connections())
        memory["soak"], memory["peak_under_soak_mb"] = asyncio.run(
            scenarios.pipeline_with_memory(
                lambda: scenarios.pipeline_ours(
                    stack, file_id=self.file_id, jobs=args.soak, concurrency=args.submitters, label="soak"
                ),
                stack.pids(),
                servers=stack.server_pids(),
            )
        )
        time.sleep(2)
        memory["after_soak_mb"] = stack.rss()
        memory["connections_after_soak"] = asyncio.run(stack.connections())
        memory["soak_growth_pct"] = {
            name: round(100 * (after / memory["after_pipeline_mb"][name] - 1), 1)
            for name, after in memory["after_soak_mb"].items()
            if memory["after_pipeline_mb"].get(name)
        }
        print(
            f"memory after soak of {args.soak}: {memory['after_soak_mb']} "
            f"growth% {memory['soak_growth_pct']} "
            f"connections {memory['connections_before_soak']} -> {memory['connections_after_soak']}",
            flush=True,
        )
        self.save()


def _ratio(ours: float, theirs: float) -> float | None:
    """ours / theirs, or None when theirs rounded to 0 (under 0.05 ms)."""
    return round(ours / theirs, 2) if theirs else None


def main() -> None:
    args = parse()
    # Open-loop clients hold a socket per request in flight; let them have as many as the system allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / "platform.json"
    results: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}
    results["meta"] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_at_start": load(),
        "args": vars(args),
    }
    print(f"load at start: {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-platform-") as tmp, Stack(Path(tmp)) as stack:
        work = Path(tmp)
        wav = work / "tone.wav"
        make_audio(wav, duration_s=1.0, sample_rate=44100, channels=2)
        run = Run(args=args, results=results, stack=stack, work=work, wav=wav)
        run.http()
        if {"pipeline", "memory"} & set(args.only):
            run.pipeline()
            if "memory" in args.only and args.soak > 0:
                run.soak()
        run.save()
    markdown = report.markdown(results)
    (RESULTS / "platform.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()

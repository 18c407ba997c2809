"""The Markdown tables of bench/results/platform.md, from the figures of platform.json."""

from __future__ import annotations

from typing import Any

#: Endpoint -> (saturation share of the ceiling it must reach, p99 at the fixed rate it must stay under, ms).
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "POST /v1/jobs": (0.25, 50.0),
    "GET /v1/jobs/{id}": (0.50, 20.0),
}


#: What each commit-floor row of `POST /v1/jobs` stands for (see `scenarios._commit_floors`).
_FLOOR_NOTES = {
    "on": "the floor under a durable POST: one single-row commit, flushed, at the same rate",
    "off": "the same without waiting for the WAL flush: a stall here too is not the flush's",
}


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _ms(fig: dict[str, Any]) -> str:
    return f"{fig['p50_ms']:.1f} / {fig['p99_ms']:.1f} / {fig['p999_ms']:.1f}"


def http_table(results: dict[str, Any]) -> list[str]:
    ceiling = results.get("ceiling", {}).get("bare FastAPI GET envelope")
    lines = [
        "| Endpoint | saturation req/s | x ceiling | sat. p50 / p99 / p99.9 ms | sat. errors "
        "| fixed rate | p50 / p99 / p99.9 ms | errors | target |",
        "|---|---:|---:|---|---:|---:|---|---:|---|",
    ]
    if ceiling:
        runs = ", ".join(f"{rps:.0f}" for rps in ceiling.get("runs_rps", []))
        lines.append(
            f"| bare FastAPI GET (ceiling, the best of {runs}) | {ceiling['rps']:.0f} | 1.00 "
            f"| {_ms(ceiling)} | {ceiling['errors']} | | | | issue: ≈3k req/s |"
        )
    for label, both in results.get("gateway", {}).items():
        if label == "profiles":
            continue
        sat, held = both["saturation"], both["fixed_rate"]
        ratio = sat.get("ratio_to_ceiling")
        share, p99 = TARGETS.get(label, (None, None))
        target = []
        if share is not None and ratio is not None:
            target.append(f"≥{share:.0%} of ceiling: {_mark(ratio >= share)}")
        if p99 is not None:
            target.append(f"p99<{p99:g} ms, 0 errors: {_mark(held['p99_ms'] < p99 and held['errors'] == 0)}")
        lines.append(
            f"| {label} | {sat['rps']:.1f} | {ratio if ratio is not None else '-'} | {_ms(sat)} "
            f"| {sat['errors']} | {held['rate']:g}/s ({held['rps']:.1f} done/s) | {_ms(held)} "
            f"| {held['errors']}/{held['requests']} "
            f"| {'; '.join(target)} |"
        )
        for setting, floor in both.get("commit_floor", {}).items():
            lines.append(
                f"| bare PostgreSQL commit, synchronous_commit {setting} | | | | "
                f"| {held['rate']:g}/s | {_ms(floor)} | {floor['errors']}/{floor['requests']} "
                f"| {_FLOOR_NOTES[setting]} |"
            )
        if alone := both.get("saturation_relay_stopped"):
            alone_ratio = alone.get("ratio_to_ceiling")
            lines.append(
                f"| {label}, relay stopped (the gateway alone) | {alone['rps']:.1f} "
                f"| {alone_ratio if alone_ratio is not None else '-'} | {_ms(alone)} | {alone['errors']} "
                "| | | | for comparison: no relay or RabbitMQ work on the cores |"
            )
    return lines


def pipeline_table(results: dict[str, Any]) -> list[str]:
    pipe = results.get("pipeline")
    if not pipe:
        return []
    ours, celery = pipe["medialens"], pipe["celery"]
    return [
        "| Pipeline (audio.probe) | jobs | jobs/s | p50 s | p99 s | statuses |",
        "|---|---:|---:|---:|---:|---|",
        *(
            f"| {name} | {f['jobs']} | {f['jobs_per_s']} | {f['p50_s']} | {f['p99_s']} | {f['statuses']} |"
            for name, f in (("MediaLens", ours), ("Celery 5 (prefork 2)", celery))
        ),
        f"| **ratio** MediaLens / Celery | | x{pipe['jobs_per_s_ratio']} | | x{pipe['p99_ratio']} "
        f"| target ≥5x jobs/s: {_mark(pipe['jobs_per_s_ratio'] >= 5)}; "
        f"p99 ≤ 1/5: {_mark(pipe['p99_ratio'] <= 0.2)} |",
        *(
            [
                f"| Celery 5, FFmpeg's default open (calibration) | {plain['jobs']} | {plain['jobs_per_s']} "
                f"| {plain['p50_s']} | {plain['p99_s']} | {plain['statuses']} |",
                f"| ratio MediaLens / that | | x{pipe['jobs_per_s_ratio_to_plain']} | | "
                "| for scale, not the target |",
            ]
            if (plain := pipe.get("celery_plain_probe"))
            else []
        ),
        *(
            f"| at {rate}/s on a fixed timetable: {name} | {f['jobs']} | {f['jobs_per_s']} | {f['p50_s']} "
            f"| {f['p99_s']} | {f['statuses']} |"
            for rate, paced in pipe.get("paced", {}).items()
            for name, f in (("MediaLens", paced["medialens"]), ("Celery", paced["celery"]))
        ),
        *(
            f"| at {rate}/s: ratio MediaLens / Celery | | | x{paced['p50_ratio']} | x{paced['p99_ratio']} "
            "| submit to done, below both systems' capacity |"
            for rate, paced in pipe.get("paced", {}).items()
        ),
        *(
            [
                f"| MediaLens relay lag (submit to confirmed publish) | | | {ours['relay_lag_p50_s']} "
                f"| {ours['relay_lag_p99_s']} | target p99 ≤ 2 s: {_mark(ours['relay_lag_p99_s'] <= 2)} |"
            ]
            if "relay_lag_p99_s" in ours
            else []
        ),
    ]


def memory_table(results: dict[str, Any]) -> list[str]:
    mem = results.get("memory")
    if not mem:
        return []
    lines = [
        "| Process (RSS, MB) | idle | peak, pipeline | after pipeline | peak, soak | after soak "
        "| soak growth | PG / Redis / AMQP ch. before → after soak |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    before, after = mem.get("connections_before_soak", {}), mem.get("connections_after_soak", {})
    for name, idle in mem["idle_mb"].items():
        b, a = before.get(name, {}), after.get(name, {})
        conns = (
            f"{b.get('postgres', '-')}/{b.get('redis', '-')}/{b.get('amqp_channels', '-')} → "
            f"{a.get('postgres', '-')}/{a.get('redis', '-')}/{a.get('amqp_channels', '-')}"
        )
        cells = [
            idle,
            mem["peak_under_pipeline_mb"].get(name, "-"),
            mem["after_pipeline_mb"].get(name, "-"),
            mem.get("peak_under_soak_mb", {}).get(name, "-"),
            mem.get("after_soak_mb", {}).get(name, "-"),
            f"{mem.get('soak_growth_pct', {}).get(name, '-')}%",
            conns,
        ]
        lines.append(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    for name, idle in mem.get("celery_idle_mb", {}).items():
        lines.append(
            f"| {name} (baseline) | {idle} | {mem.get('celery_peak_mb', {}).get(name, '-')} | | | | | |"
        )
    soak = mem.get("soak")
    if soak:
        lines.append(
            f"\nSoak: {soak['jobs']} jobs at {soak['jobs_per_s']} jobs/s, statuses {soak['statuses']}."
        )
    return lines


def calibration_table(results: dict[str, Any]) -> list[str]:
    cal = results.get("calibration")
    if not cal:
        return []
    lines = [
        "Calibration: the issue's reference figures on this machine "
        "(rows marked * are compared with the quote; the others are for scale).",
        "",
        "| Figure | quoted | measured | factor |",
        "|---|---:|---:|---:|",
        *(
            f"| {label}{' *' if fig['in_median'] else ''} | {fig['quoted']:,.0f} | {fig['measured']:,.0f} "
            f"| x{fig['factor']} |"
            for label, fig in cal["figures"].items()
        ),
    ]
    celery, plain = cal.get("celery"), cal.get("celery_plain_probe")
    for label, fig in (("`probe_audio`, the baseline", celery), ("FFmpeg's default open", plain)):
        if fig:
            lines.append(
                f"| Celery probe jobs/s, {label} ({fig['jobs']} jobs, p99 {fig['p99_s']} s; quoted: "
                f"{fig['quoted_jobs']} jobs, p99 {fig['quoted_p99_s']:g} s) | {fig['quoted']:,.0f} "
                f"| {fig['measured']:,.1f} | x{fig['factor']} |"
            )
    summary = f"The median factor of the micro figures (*) is x{cal['median_factor']}"
    if celery and plain:
        summary += (
            f"; Celery's baseline runs at x{celery['factor']} its quote ({celery['factor_over_median']} times"
            f" that median), with FFmpeg's default open x{plain['factor']} ({plain['factor_over_median']}"
            " times)"
        )
    else:
        summary += " (no pipeline in this run, so no Celery factor)"
    server = cal.get("postgres_server", {})
    lines += [
        "",
        f"{summary}. PostgreSQL: fsync {server.get('fsync', '?')}, "
        f"synchronous_commit {server.get('synchronous_commit', '?')}.",
    ]
    return lines


def pool_lines(results: dict[str, Any]) -> list[str]:
    pool = results.get("pool")
    if not pool:
        return []
    rounds = "; ".join(
        f"{r['requests']} at once: {r['errors']} errors, p99 {r['p99_ms']:.0f} ms, {r['seconds']} s"
        for r in pool["rounds"]
    )
    return [
        f"Pool stress ({pool['concurrency']} concurrent, the gateway's default pool of "
        f"{pool['pool_after'].get('capacity')}): {rounds}. Pool timeouts in the log: "
        f"{pool['pool_timeouts_in_log']}; checked out afterwards: {pool['checked_out_after']} "
        f"(capacity {pool['pool_after'].get('capacity')}); gateway backends on the server afterwards: "
        f"{pool['gateway_pg_backends_after']} "
        f"({pool['gateway_idle_in_transaction_after']} idle in transaction).",
    ]


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    parts = [
        "# Platform benchmark",
        "",
        f"Run {meta.get('started', '?')}; load average at start {meta.get('load_at_start', '?')}, at end "
        f"{meta.get('load_at_end', '?')}. Command: `make bench-platform` ({meta.get('args', {})}).",
        "",
        *calibration_table(results),
        "",
        *http_table(results),
        "",
        *pipeline_table(results),
        "",
        *memory_table(results),
        "",
        *pool_lines(results),
        "",
    ]
    return "\n".join(parts)

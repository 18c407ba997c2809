"""The platform benchmark: MediaLens against a Celery baseline and this machine's HTTP ceiling.

    uv run --group bench python -m bench.platform [--jobs 2000] [--soak 2000] [--duration 10] [--only ...]
    make bench-platform                      # the same, with the defaults below
    make bench-platform SOAK=20000           # the issue's full soak (about 20,000 / pipeline jobs/s seconds)

Scenarios, each printing one line of figures per measurement, all written to bench/results/platform.json
and as a Markdown table to bench/results/platform.md:

1. ceiling   a bare FastAPI endpoint returning the envelope, one uvicorn process, wrk at saturation, the best
             of three measurements.
   calibration the issue's reference figures on this machine (bench.platform.calibrate): aio-pika
             confirmed publishes, single-row PostgreSQL commits, nx-27017 writes and a bare FastAPI on
             the standard library's loop, each against its quote; after scenario 3, Celery's jobs/s
             against its quote beside them, and a third pipeline, Celery running the probe with
             FFmpeg's default open (`celery_app.probe_plain`), to tell whether the quote was that.
2. gateway   POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/jobs?limit=50, uploads of 1 MB and 100 MB: wrk at
             saturation, and an open-loop client at a fixed rate (400/s; uploads 10/s and 0.2/s), with
             latency from each request's scheduled time, once the relay has sent what the saturation left;
             POST /v1/jobs also at saturation with the relay stopped (the gateway alone), and its fixed
             rate beside bare single-row PostgreSQL commits on the same timetable, flushed and with
             `synchronous_commit` off (the commit floor under a durable 202, and the disk's part). The
             workers are stopped meanwhile and the queues purged afterwards, so the later scenarios start
             from empty queues.
5. pool      500 requests at one moment against the gateway's default pool (30 + 0; the issue's 20 + 10
             had its overflow opened and closed request after request under steady load): errors, pool
             timeouts, connections checked out afterwards (/metrics) and backends on the server.
3. pipeline  N `audio.probe` jobs of a small WAV through the gateway until all are terminal (jobs/s,
             created_at -> finished_at p50/p99), then the same probe as a Celery 5 task (RabbitMQ on its
             own vhost, Redis results, acks_late, prefork 2) submitted from FastAPI writing a job row.
             Like Celery's two pool processes, the audio service runs as two processes (replicas, as a
             deployment scales it; `--audio-processes`), each running up to 8 jobs at once. Then
             each system again at fixed job rates below both capacities (`--paced-rates`, 20 and
             200 a second for `--paced-s` 10 s, on a timetable: open loop): what a job waits when
             nothing queues, which the all-at-once run hides behind its backlog.
4. memory    resident memory of every process idle, at its peak under scenario 3, and after a soak of M
             more jobs (growth from after scenario 3), with server-side connection counts before/after.

Apart from them, `python -m bench.platform.relay_cost` measures the relay's CPU per outbox entry alone.

Needs the local PostgreSQL, Redis and RabbitMQ (rabbitmqctl, as root) and wrk (installed with apt-get
when missing). MongoDB is MEDIALENS_MONGODB_URL or an nx-27017 dev server started here.
"""

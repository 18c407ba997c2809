"""`media.analyze`: one composite job fanned out into its parts on the real stack, following them to the
end and gathering their results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from sqlalchemy import func, update

from medialens_shared.contracts import JobMessage
from medialens_shared.signals import JobSignals
from medialens_shared.tables import jobs, outbox
from scripts.samples import make_audio_only, make_video
from tests.fixtures.stack import Stack, result_of, submit, upload, wait_for

#: As the catalogue lists them: the order of `children` (the parts were listed by their random ids before).
PARTS = ("video.probe", "video.scenes", "video.quality", "audio.loudness", "audio.silence")


async def test_media_analyze_runs_every_part_and_gathers_their_results(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The parent lists one child per part in the catalogue's order (in the job and in the job list), succeeds
    once they all have, and its result holds each part's."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=3.0, fps=25, width=160, height=120, with_audio=True, cuts_s=[1.0, 2.0])
    job = await submit(api, "media.analyze", await upload(api, path))
    assert len(job["children"]) == len(PARTS)
    listed = (await api.get("/v1/jobs", params={"type": "media.analyze", "limit": 200})).json()["data"]
    assert next(item for item in listed["items"] if item["id"] == job["id"])["children"] == job["children"]
    done = await wait_for(api, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0
    children = [await wait_for(api, child) for child in done["children"]]
    assert tuple(child["type"] for child in children) == PARTS
    assert all(child["parent_id"] == job["id"] and child["status"] == "succeeded" for child in children)
    result = await result_of(api, job["id"])
    assert result["type"] == "media.analyze"
    assert result["video.probe"]["video"]["width"] == 160
    assert result["video.scenes"]["cut_count"] == 2
    # The clip's sound is a steady sine at -23 dBFS in both channels: about -23 LUFS, and no silence.
    assert abs(result["audio.loudness"]["integrated_lufs"] - (-23.0)) < 1.0, result["audio.loudness"]
    assert result["audio.silence"]["segments"] == []
    # A succeeded part without its result (the job retention drops results before job rows) makes the
    # result unreadable for now, not a result with that part null, which reads as "does not apply".
    probe = next(child["id"] for child in children if child["type"] == "video.probe")
    await stack.db.collection("results").delete_one({"_id": probe})
    response = await api.get(f"/v1/jobs/{job['id']}/result")
    assert response.status_code == 409, response.text
    assert response.json()["error_code"] == "JOB_NOT_FINISHED"


async def test_a_part_that_does_not_apply_leaves_a_gap_not_a_failure(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """On a video without sound the audio parts fail UNSUPPORTED_INPUT, the parent still succeeds, their
    results are null, and the parent's message says which parts do not apply and why."""
    path = tmp_path / "silent.mp4"
    make_video(path, duration_s=1.0, fps=10, width=96, height=64)
    job = await submit(api, "media.analyze", await upload(api, path))
    done = await wait_for(api, job["id"], timeout=120)
    assert (done["status"], done["progress"]) == ("succeeded", 1.0), done
    assert done["message"].startswith("3/5 parts done; audio.loudness, audio.silence do not apply: ")
    assert "no audio stream" in done["message"]
    result = await result_of(api, job["id"])
    assert result["audio.loudness"] is None
    assert result["audio.silence"] is None
    assert result["video.probe"]["video"]["height"] == 64


async def test_a_video_part_that_does_not_apply_fails_the_whole(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Only the audio parts may leave a gap: an MPEG program stream holding only a soundtrack (taken as a
    video by its container) fails UNSUPPORTED_INPUT with video.probe's reason; it succeeded with every video
    part null."""
    path = tmp_path / "audio-only.mpg"
    make_audio_only(path, container_format="mpeg", codec="mp2")
    job = await submit(api, "media.analyze", await upload(api, path))
    done = await wait_for(api, job["id"], timeout=120)
    assert (done["status"], done["error_code"]) == ("failed", "UNSUPPORTED_INPUT"), done
    assert done["error_message"].startswith("video.probe failed: "), done
    assert "no video stream" in done["error_message"]
    assert done["message"] == "failed; 2/5 parts done"


async def test_cancelling_the_parent_cancels_its_parts(
    stack_proxy_cut: None, stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A composite job whose parts are still queued is cancelled with all of them, and its followers hear
    of it at once (not at their stream's next keep-alive)."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=96, height=64)
    file_id = await upload(api, path)
    job = await submit(api, "media.analyze", file_id)
    signals = JobSignals(stack.db.redis, prefix=stack.settings.redis.prefix)
    async with stack.db.redis.pubsub() as pubsub:
        await pubsub.subscribe(signals.channel(job["id"]))
        response = await api.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 202, response.text
        heard: list[str] = []
        deadline = time.monotonic() + 2.0
        while "cancelled" not in heard:
            assert time.monotonic() < deadline, f"the parent's followers heard {heard}, not its cancel"
            # None for the subscription's own confirmation, or when nothing came within the timeout.
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                heard.append(json.loads(message["data"])["status"])
    # It never ran: it reads as a single job cancelled while queued does (it passed through running and
    # read "5/5 parts done", progress 1.0, with a start time).
    assert "running" not in heard
    parent = await wait_for(api, job["id"], timeout=10)
    assert parent["status"] == "cancelled"
    assert (parent["progress"], parent["message"], parent["started_at"]) == (
        0.0,
        "cancelled before it started",
        None,
    )
    for child in parent["children"]:
        assert (await wait_for(api, child))["status"] == "cancelled"


async def test_cancelling_the_parent_deletes_the_files_of_a_part_waiting_for_its_rerun(
    stack_proxy_cut: None, stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A part queued again after an attempt whose worker died, having saved a file: the composite job's
    cancel cancels the part, and its file is deleted, as its rerun would have deleted it (it stayed the
    tenant's for ever)."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=96, height=64)
    job = await submit(api, "media.analyze", await upload(api, path))
    part = job["children"][0]
    async with stack.db.session() as session:
        await session.execute(update(jobs).where(jobs.c.id == part).values(attempts=1, started_at=func.now()))
        await session.commit()
    saved = await stack.saved_file("tenant-a", part)
    assert (await api.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 202
    assert (await wait_for(api, part))["status"] == "cancelled"
    assert await stack.file_state(api, *saved) == "deleted"


async def test_cancelling_its_parts_one_by_one_ends_the_parent_and_tells_its_followers(
    stack_proxy_cut: None, stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Parts cancelled by their own ids leave the parent queued until the last, which cancels it; its
    followers hear that at once (they heard it only at their stream's keep-alive, ~10 s later)."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=96, height=64)
    job = await submit(api, "media.analyze", await upload(api, path))
    *first, last = job["children"]
    for child in first:
        assert (await api.post(f"/v1/jobs/{child}/cancel")).status_code == 202
    assert (await api.get(f"/v1/jobs/{job['id']}")).json()["data"]["status"] == "queued"
    signals = JobSignals(stack.db.redis, prefix=stack.settings.redis.prefix)
    async with stack.db.redis.pubsub() as pubsub:
        await pubsub.subscribe(signals.channel(job["id"]))
        assert (await api.post(f"/v1/jobs/{last}/cancel")).status_code == 202
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        while message is None or json.loads(message["data"])["status"] != "cancelled":
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
            assert message is not None, "the parent's followers did not hear its cancel"
    parent = (await api.get(f"/v1/jobs/{job['id']}")).json()["data"]
    assert (parent["status"], parent["message"]) == ("cancelled", "cancelled before it started")


async def test_a_part_dead_lettered_while_queued_does_not_start_its_composite_job(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A part the broker gave up on before any worker had it fails, and the parent stays queued with no
    start time: no worker has had a part yet (a failed part counted as one that had run)."""
    path = tmp_path / "clip.mp4"
    make_video(path, duration_s=1.0, fps=10, width=96, height=64)
    file_id = await upload(api, path)
    async with stack.relay_cut_off():
        job = await submit(api, "media.analyze", file_id)
    async with stack.db.session() as session:  # the parts' messages are never published
        await session.execute(
            update(outbox).where(outbox.c.job_id.in_(job["children"])).values(sent_at=func.now())
        )
        await session.commit()
    part = (await api.get(f"/v1/jobs/{job['children'][0]}")).json()["data"]
    await stack.publish_dead(
        JobMessage(job_id=part["id"], type=part["type"], tenant_id="tenant-a", file_id=file_id)
    )
    assert (await wait_for(api, part["id"], timeout=20))["status"] == "failed"
    parent = (await api.get(f"/v1/jobs/{job['id']}")).json()["data"]
    assert (parent["status"], parent["started_at"]) == ("queued", None)

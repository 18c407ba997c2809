"""Unit tests of `probe_video` against generated media whose properties are known exactly."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from medialens_shared.errors import InputNotFound, MediaDecodeError, UnsupportedInput
from medialens_video.frames import opened
from medialens_video.probe import probe_video
from medialens_video.quality import detect_quality
from medialens_video.scenes import detect_scenes
from scripts.samples import corrupt, make_audio, make_csv, make_numbered_video, make_video, truncate
from tests.fixtures.memory import resident_bytes_left_per_call
from tests.fixtures.pictures import mux_black_picture


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    make_video(path, duration_s=2.0, fps=25, width=320, height=240, with_audio=True)
    return path


def test_reads_exact_video_metadata(tmp_path: Path) -> None:
    """A generated H.264 MP4 reports its exact codec, size, rate, frame count and duration."""
    path = tmp_path / "v.mp4"
    make_video(path, duration_s=1.6, fps=30, width=160, height=96)
    result = probe_video(path)
    assert result.format.name.startswith("mov,mp4")
    assert result.format.size_bytes == path.stat().st_size
    assert result.format.duration_s == pytest.approx(1.6, abs=1 / 30)
    assert result.format.bit_rate is not None
    assert result.format.bit_rate > 0
    video = result.video
    assert (video.codec, video.width, video.height) == ("h264", 160, 96)
    assert video.fps == 30.0
    assert video.avg_fps == 30.0
    assert video.is_vfr is False
    assert video.frame_count == 48
    assert video.pix_fmt == "yuv420p"
    assert video.field_order == "progressive"
    assert video.rotation == 0
    assert result.audio == []


@pytest.mark.parametrize(
    ("width", "height", "pixel_aspect", "sar", "dar"),
    [
        (160, 96, None, "1:1", "5:3"),
        (720, 576, Fraction(16, 11), "16:11", "20:11"),  # PAL 16:9 as its pixels say (ffprobe agrees)
        (720, 576, Fraction(64, 45), "64:45", "16:9"),  # PAL 16:9 as its standard says
        (1440, 1080, Fraction(4, 3), "4:3", "16:9"),  # HDV
        (320, 240, Fraction(100, 1), "1:1", "4:3"),  # broken: taken as square, as thumbnails take it
    ],
)
def test_pixel_and_display_aspect_ratios(
    tmp_path: Path, width: int, height: int, pixel_aspect: Fraction | None, sar: str, dar: str
) -> None:
    """The pixels' shape and the picture's as shown, as ffprobe writes them: a 720 x 576 PAL 16:9 clip
    reported only its stored size, and looked 5:4."""
    path = tmp_path / "aspect.mp4"
    make_video(path, duration_s=0.2, fps=25, width=width, height=height, pixel_aspect=pixel_aspect)
    video = probe_video(path).video
    assert (video.sample_aspect_ratio, video.display_aspect_ratio) == (sar, dar)
    if shutil.which("ffprobe") and pixel_aspect is not None and sar != "1:1":
        shown = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=sample_aspect_ratio,display_aspect_ratio",
                "-of",
                "csv=p=0",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert shown == f"{sar},{dar}"


def test_lists_the_audio_track(clip: Path) -> None:
    """A video with an AAC track lists it with its sample rate, channels and duration."""
    result = probe_video(clip)
    assert result.video.frame_count == 50
    assert len(result.audio) == 1
    audio = result.audio[0]
    assert (audio.codec, audio.sample_rate, audio.channels) == ("aac", 48000, 2)
    assert audio.duration_s == pytest.approx(2.0, abs=1024 / 48000)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_an_audio_stream_shorter_than_the_video_has_its_own_duration(tmp_path: Path, suffix: str) -> None:
    """1 s of AAC beside 2 s of video: in Matroska the audio stream reported the container's 2 s (FFmpeg
    gives every Matroska stream the container's duration); its `DURATION` tag says 1.02 s (AAC's last
    frame padded to 1024 samples), as ffprobe shows it."""
    path = tmp_path / f"short-audio{suffix}"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        for index in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 5, np.uint8), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, 48000, 1000):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 2000), np.int16), format="s16", layout="stereo")
            samples.sample_rate, samples.pts = 48000, start
            container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
    result = probe_video(path)
    assert result.format.duration_s == pytest.approx(2.0, abs=0.05)
    (track,) = result.audio
    assert track.duration_s == pytest.approx(1.0, abs=0.03)


def test_mpeg4_codec(tmp_path: Path) -> None:
    """An MPEG-4 Part 2 clip reports codec `mpeg4` and its frame count."""
    path = tmp_path / "v.mp4"
    make_video(path, duration_s=1.0, fps=25, codec="mpeg4")
    result = probe_video(path)
    assert result.video.codec == "mpeg4"
    assert result.video.frame_count == 25


def test_frame_count_without_container_count(tmp_path: Path) -> None:
    """A Matroska clip, whose stream holds no frame count, gets one from duration times rate."""
    path = tmp_path / "v.mkv"
    make_video(path, duration_s=2.0, fps=25)
    result = probe_video(path)
    assert result.format.name.startswith("matroska")
    assert result.video.frame_count == 50
    assert result.format.duration_s == pytest.approx(2.0, abs=1 / 25)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation(tmp_path: Path, rotation: int) -> None:
    """A clip whose display matrix rotates it clockwise reports that rotation in degrees."""
    path = tmp_path / "r.mp4"
    make_video(path, duration_s=0.4, rotation=rotation)
    result = probe_video(path)
    assert result.video.rotation == rotation
    assert (result.video.width, result.video.height) == (320, 240)


def test_variable_frame_rate(tmp_path: Path) -> None:
    """A clip whose later frames last longer is flagged VFR with an average rate below the nominal one."""
    path = tmp_path / "vfr.mp4"
    make_video(path, duration_s=2.0, fps=25, vfr=True)
    video = probe_video(path).video
    assert video.fps == 25.0
    assert video.avg_fps is not None
    assert video.avg_fps < 20.0
    assert video.is_vfr is True
    assert video.frame_count == 50


def test_audio_only_is_unsupported(tmp_path: Path) -> None:
    """A WAV has no video stream, so the probe rejects it as unsupported input."""
    path = tmp_path / "a.wav"
    make_audio(path, duration_s=0.5)
    with pytest.raises(UnsupportedInput, match="no video stream"):
        probe_video(path)


def test_csv_is_unsupported(tmp_path: Path) -> None:
    """A CSV table is rejected as unsupported input."""
    path = tmp_path / "t.csv"
    make_csv(path, rows=20)
    with pytest.raises(UnsupportedInput):
        probe_video(path)


def test_empty_file_is_unsupported(tmp_path: Path) -> None:
    """An empty file is rejected as unsupported input, not as damaged media."""
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedInput, match="empty"):
        probe_video(path)


def test_random_bytes_are_unsupported(tmp_path: Path) -> None:
    """Bytes no demuxer recognises and that do not sniff as media are unsupported input."""
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(UnsupportedInput):
        probe_video(path)


def test_truncated_mp4_is_a_decode_error(clip: Path, tmp_path: Path) -> None:
    """An MP4 cut in half loses its index and is reported as damaged media."""
    damaged = tmp_path / "cut.mp4"
    truncate(clip, damaged, keep_fraction=0.5)
    with pytest.raises(MediaDecodeError, match="damaged or truncated"):
        probe_video(damaged)


def test_corrupted_first_frame_is_a_decode_error(clip: Path, tmp_path: Path) -> None:
    """An MP4 whose first frame is overwritten with garbage is reported as damaged media."""
    damaged = tmp_path / "garbled.mp4"
    corrupt(clip, damaged, start_fraction=0.0, end_fraction=0.5)
    with pytest.raises(MediaDecodeError, match="cannot be decoded"):
        probe_video(damaged)


def test_corrupted_middle_still_probes(clip: Path, tmp_path: Path) -> None:
    """Garbage in the middle of an MP4 leaves the index and first frame intact, so the probe succeeds."""
    damaged = tmp_path / "middle.mp4"
    corrupt(clip, damaged)
    assert probe_video(damaged).video.frame_count == 50


def test_missing_file(tmp_path: Path) -> None:
    """A path with no file behind it raises InputNotFound."""
    with pytest.raises(InputNotFound):
        probe_video(tmp_path / "nothing.mp4")


def test_probing_leaves_no_memory_behind(clip: Path) -> None:
    """A probe stops at the first frame: the demuxer it leaves midway must be closed (`demux.demuxed`),
    not dropped, or PyAV keeps part of each probe for good."""
    assert resident_bytes_left_per_call(lambda: probe_video(clip), calls=2000) < 50


@pytest.mark.skipif(
    shutil.which("mkvmerge") is None, reason="mkvmerge (Debian's mkvtoolnix) is not installed"
)
def test_the_frame_count_of_a_late_video_muxed_by_mkvmerge(tmp_path: Path) -> None:
    """mkvmerge writes a track's length in its DURATION tag (FFmpeg's muxer its end time): 100 frames
    starting 1 s into the file count 100 (read as an end time, 75)."""
    made = tmp_path / "clip.mp4"
    make_video(made, duration_s=4.0, fps=25)
    late = tmp_path / "late.mkv"
    subprocess.run(["mkvmerge", "-q", "-o", str(late), "--sync", "0:1000", str(made)], check=True)
    assert probe_video(late).video.frame_count == 100


def _mux_cut_at_1_2(container: Any, *tracks: Any) -> None:
    """Two seconds at 25 fps of flat 64x48 frames, dark until a cut at 1.2 s (frame 30), then light,
    encoded into each of `tracks` (64x48, yuv420p) of `container` and flushed."""
    for i in range(50):
        level = 40 if i < 30 else 200
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        for track in tracks:
            container.mux(track.encode(frame))
    for track in tracks:
        container.mux(track.encode(None))


def test_the_video_analysed_is_the_track_flagged_default_not_a_still_before_it(tmp_path: Path) -> None:
    """A Matroska file with a one-frame picture track first (not flagged default, nor attached: as ffmpeg
    5.1 wrote a cover) and the 2 s video second, flagged default: the jobs read the video, as players show
    it. They read the picture: probe said mjpeg and 1 frame, scenes one scene of it."""
    path = tmp_path / "with-still.mkv"
    with av.open(str(path), mode="w") as container:
        still = container.add_stream("mjpeg", rate=1)
        video = container.add_stream("libx264", rate=25)
        for stream, pix_fmt in ((still, "yuvj420p"), (video, "yuv420p")):
            stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        still.disposition = 0
        video.disposition = av.stream.Disposition.default
        mux_black_picture(container, still)
        _mux_cut_at_1_2(container, video)
    result = probe_video(path)
    assert (result.video.codec, result.video.frame_count) == ("h264", 50)
    scenes = detect_scenes(path, min_scene_len_s=0.2)
    assert scenes.frames_analyzed == 50
    assert [round(scene.start_s, 2) for scene in scenes.scenes] == [0.0, 1.2]


def test_a_tag_that_is_not_utf8_is_read_with_the_rest_of_the_file(tmp_path: Path) -> None:
    """A video titled in Latin-1 is probed and analysed: opening it failed every video job with a
    UnicodeDecodeError (an INTERNAL_ERROR), PyAV reading tags strictly."""
    path = tmp_path / "tagged.mkv"
    with av.open(str(path), mode="w") as container:
        container.metadata["title"] = "QQQQQQ"
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        _mux_cut_at_1_2(container, video)
    data = path.read_bytes()
    assert data.count(b"QQQQQQ") == 1
    path.write_bytes(data.replace(b"QQQQQQ", "Café!!".encode("latin-1")))
    with pytest.raises(UnicodeDecodeError):
        av.open(str(path)).close()  # PyAV's default
    assert probe_video(path).video.frame_count == 50
    scenes = detect_scenes(path, min_scene_len_s=0.2)
    assert [round(scene.start_s, 2) for scene in scenes.scenes] == [0.0, 1.2]


def test_a_codec_with_no_decoder_is_unsupported_input_and_its_audio_is_left_out(tmp_path: Path) -> None:
    """A Matroska file whose video codec FFmpeg has no decoder for fails UNSUPPORTED_INPUT, and one whose
    audio codec it has none for is probed without that stream: PyAV gives such a stream no codec context,
    and every video job failed with an AttributeError (an INTERNAL_ERROR)."""
    source = tmp_path / "plain.mkv"
    make_video(source, duration_s=2.0, segments=2, with_audio=True)
    data = source.read_bytes()
    assert (data.count(b"V_MPEG4/ISO/AVC"), data.count(b"A_AAC")) == (1, 1)
    unknown_video, unknown_audio = tmp_path / "unknown-video.mkv", tmp_path / "unknown-audio.mkv"
    unknown_video.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/ISO/AVC"))
    unknown_audio.write_bytes(data.replace(b"A_AAC", b"A_ZZZ"))
    for job in (probe_video, detect_scenes):
        with pytest.raises(UnsupportedInput, match="video stream is in a codec this service cannot decode"):
            job(unknown_video)
    assert len(probe_video(source).audio) == 1
    result = probe_video(unknown_audio)
    assert (result.video.frame_count, result.audio) == (50, [])
    assert len(detect_scenes(unknown_audio).scenes) == 2


def test_a_video_whose_edit_list_hides_every_frame_is_damaged_in_every_job(tmp_path: Path) -> None:
    """An MP4 whose 3 s of frames all come before its start (pts from -5 s: the muxer's edit list shows
    none of them, and ffmpeg decodes no frame) fails MEDIA_DECODE_ERROR, in scenes as in probe: scenes
    failed with a ZeroDivisionError (an INTERNAL_ERROR), planning the decoding of no frame."""
    path = tmp_path / "hidden.mp4"
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(75):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i - 125, Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    for job in (probe_video, detect_scenes):
        with pytest.raises(MediaDecodeError, match="holds no decodable frame"):
            job(path)


def test_a_video_track_in_a_codec_with_no_decoder_before_a_readable_one_is_passed_over(
    tmp_path: Path,
) -> None:
    """Of a Matroska file's two video tracks, the first (flagged default) in a codec FFmpeg has no decoder
    for, the jobs read the second: they took the first and failed UNSUPPORTED_INPUT."""
    made, path = tmp_path / "two.mkv", tmp_path / "first-unknown.mkv"
    with av.open(str(made), mode="w") as container:
        first = container.add_stream("mpeg4", rate=25)
        second = container.add_stream("libx264", rate=25)
        for track in (first, second):
            track.width, track.height, track.pix_fmt = 64, 48, "yuv420p"
        first.disposition = av.stream.Disposition.default
        _mux_cut_at_1_2(container, first, second)
    data = made.read_bytes()
    assert data.count(b"V_MPEG4/ISO/ASP") == 1
    path.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_XXXXX/ISO/ASP"))
    result = probe_video(path)
    assert (result.video.codec, result.video.frame_count) == ("h264", 50)
    scenes = detect_scenes(path, min_scene_len_s=0.2)
    assert [round(scene.start_s, 2) for scene in scenes.scenes] == [0.0, 1.2]


def test_an_mpeg_ts_soundtrack_whose_packets_come_late_is_listed_with_its_format(tmp_path: Path) -> None:
    """An MPEG-TS lists its tracks before their packets; with every audio packet after 12 s of video,
    FFmpeg's look at the file's first 5 s met none, and the track was listed at 0 Hz, 0 channels, lasting
    the whole file. A longer look (`LATE_STREAM_PROBE`) finds its format and its own 2 s; the other jobs,
    which read the video alone, take none."""
    path = tmp_path / "late.ts"
    with av.open(str(path), "w", format="mpegts") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("mp2", rate=48000)
        audio.layout = "mono"
        for index in range(14 * 25):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index % 250, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, 2 * 48000, 1152):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.time_base = 48000, Fraction(1, 48000)
            samples.pts = 12 * 48000 + start
            container.mux(audio.encode(samples))
        container.mux(audio.encode(None))
    (track,) = probe_video(path).audio
    assert (track.sample_rate, track.channels) == (48000, 1)
    assert track.duration_s == pytest.approx(2.0, abs=0.05)
    # The jobs that read the video alone (a scene job opens the file once for each stretch) do not pay
    # for the longer look: 64 MiB read and held on every open.
    with opened(path) as container:
        assert "analyzeduration" not in container.options


def test_an_avi_ticking_twice_a_frame_states_its_frames_not_its_ticks(tmp_path: Path) -> None:
    """An AVI whose ticks are half a frame (as `ffmpeg -i in.mp4 -c copy out.avi` writes H.264 with
    B-frames: 1/50 s for 25 frames a second) has a header counting ticks: 200 frames at 50 a second, read
    as variable-rate, for 100 at 25. Its frames are 2 ticks apart, and so are counted."""
    path = tmp_path / "ticks.avi"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 50)
        for index in range(100):
            picture = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = 2 * index, Fraction(1, 50)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert (container.streams.video[0].frames, container.streams.video[0].average_rate) == (200, 50)
    video = probe_video(path).video
    assert (video.frame_count, video.fps, video.avg_fps, video.is_vfr) == (100, 25.0, 25.0, False)
    assert [scene.end_frame for scene in detect_scenes(path).scenes][-1:] == [100]


def test_a_soundtrack_shorter_than_the_video_in_flv_lasts_its_own_length(tmp_path: Path) -> None:
    """FLV states no stream's length, and the container's is its longest stream's: a 1 s soundtrack beside
    4 s of video read 4 s. Its last packet, read after a seek to the end, says where it ends."""
    path = tmp_path / "short-sound.flv"
    make_numbered_video(path, frame_count=100, container_format="flv", audio_s=1.0)
    result = probe_video(path)
    assert result.format.duration_s == pytest.approx(4.0, abs=0.1)
    [audio] = result.audio
    assert audio.duration_s == pytest.approx(1.0, abs=0.05)  # AAC ends on a whole 1024-sample frame


def test_an_avi_without_b_frames_whose_first_frames_are_two_ticks_apart_is_counted_as_it_states(
    tmp_path: Path,
) -> None:
    """An MJPEG AVI whose first frames come every other tick (a webcam warming up, its drops empty chunks),
    then every tick: its frames are counted as its header states them (the two-tick rule is for H.264 with
    B-frames remuxed: it halved this one's count and rate)."""
    path = tmp_path / "warming-up.avi"
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuvj420p"
        for tick in range(100):
            if tick < 40 and tick % 2:
                continue
            frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), tick, np.uint8), format="rgb24")
            frame.pts, frame.time_base = tick, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    video = probe_video(path).video
    assert (video.frame_count, video.fps, video.avg_fps) == (100, 25.0, 25.0)


def test_a_soundtrack_timed_finer_than_a_microsecond_is_measured(tmp_path: Path) -> None:
    """A soundtrack whose ticks are shorter than a microsecond (3 MHz PCM) in a file that states no
    stream's length (NUT): finding its end divided by zero (ZeroDivisionError, INTERNAL_ERROR)."""
    path = tmp_path / "fine.nut"
    rate = 3_000_000
    with av.open(str(path), "w", format="nut") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=rate)
        audio.layout = "mono"
        for index in range(50):
            picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index, np.uint8), format="rgb24")
            picture.pts, picture.time_base = index, Fraction(1, 25)
            out.mux(video.encode(picture.reformat(format="yuv420p")))
        for start in range(0, rate, rate // 10):  # 1 s of silence
            sound = av.AudioFrame.from_ndarray(
                np.zeros((1, rate // 10), np.int16), format="s16", layout="mono"
            )
            sound.sample_rate, sound.pts, sound.time_base = rate, start, Fraction(1, rate)
            out.mux(audio.encode(sound))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    [sound_track] = probe_video(path).audio
    assert sound_track.duration_s == pytest.approx(1.0, abs=0.05)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command (Debian's ffmpeg)")
def test_a_program_stream_as_ffmpeg_writes_it_is_steady(tmp_path: Path) -> None:
    """An MPEG program stream of four shots at a steady 25 frames/s, as the `ffmpeg` command writes one
    (several small frames to a PES packet), is not variable-rate and has its average rate: FFmpeg's demuxer
    gave the first packets after a seek close to its end timestamps half a frame off, and the rate checked
    there read 50 frames/s. (PyAV, another FFmpeg, writes such a file differently: the command's is the
    one users have.)"""
    path = tmp_path / "shots.mpg"
    shots = ("testsrc2", "smptebars", "mandelbrot", "testsrc")
    sources = ";".join(
        f"{shot}=s=320x240:r=25,trim=duration=1.52,format=yuv420p[s{k}]" for k, shot in enumerate(shots)
    )
    joined = "".join(f"[s{k}]" for k in range(len(shots)))
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-filter_complex",
            f"{sources};{joined}concat=n={len(shots)}",
            "-c:v",
            "mpeg2video",
            "-bf",
            "2",
            "-g",
            "300",
            str(path),
        ],
        check=True,
    )
    video = probe_video(path).video
    assert (video.fps, video.avg_fps, video.is_vfr) == (25.0, 25.0, False)
    assert video.frame_count == 152


def test_a_program_stream_of_small_frames_counts_every_frame(tmp_path: Path) -> None:
    """An MPEG program stream whose small frames share PES packets (which time only their first) counts
    its 152 frames, and quality and thumbnails take the same span: FFmpeg's estimate of its end, from the
    last timestamps, fell 8 frames short (a quality pass said "decoding 152/144 frames")."""
    path = tmp_path / "small-frames.mpg"
    with av.open(str(path), "w", format="mpeg") as container:
        stream = container.add_stream("mpeg2video", rate=25, options={"bf": "2", "g": "300"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(152):
            picture = np.full((240, 320, 3), (index // 38) * 60, np.uint8)
            picture[:, (index * 2) % 320 :] += 40
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert probe_video(path).video.frame_count == 152
    notes: list[str] = []
    assert detect_quality(path, report=lambda _f, note: notes.append(note)).frames_analyzed == 152
    assert notes[-1] == "decoding 152/152 frames"

"""Subtitle exports: the cue rules, the SRT and WebVTT renderings, export names, and the asset.

The asset test runs in-process with the test double transcriber (``doubles.py``) and reads what
it wrote with real parsers: pysubs2 for SubRip, webvtt-py for WebVTT.
"""

import random
import re
import shutil
from pathlib import Path

import numpy as np
import pysubs2
import pytest
import soundfile
import webvtt

from whisper_pipeline.core.subtitles import (
    EXPORT_ID_CHARS,
    EXPORT_SLUG_MAX_CHARS,
    MAX_CUE_S,
    MAX_LINE_CHARS,
    MAX_LINES,
    MIN_CUE_S,
    Cue,
    build_cues,
    export_slug,
    export_stem,
    export_stems,
    to_srt,
    to_vtt,
)
from whisper_pipeline_tests.inprocess import materialize, read_tables, step_failures

SPEECH = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what you can "
    "do for your country. Printing, in the only sense with which we are at present concerned, "
    "differs from most if not from all the arts and crafts represented in the Exhibition."
)


def transcript(
    sentences: list[str], word_s: float = 0.3, gap_s: float = 0.05, start_s: float = 0.5
) -> tuple[list[dict], list[dict]]:
    """Segment and word rows of one file: one segment per sentence, words spoken one by one."""
    segments, words, now, index = [], [], start_s, 0
    for segment_index, sentence in enumerate(sentences):
        first = now
        for word in sentence.split():
            words.append(
                {
                    "segment_index": segment_index,
                    "word_index": index,
                    "word": word,
                    "start_s": now,
                    "end_s": now + word_s,
                }
            )
            index += 1
            now += word_s + gap_s
        segments.append(
            {
                "segment_index": segment_index,
                "start_s": first,
                "end_s": now - gap_s,
                "text": sentence,
            }
        )
    return segments, words


def random_transcript(seed: int) -> tuple[list[dict], list[dict], float]:
    """Segments and words of random lengths, pace and punctuation; with the file's duration."""
    rng = random.Random(seed)
    vocabulary = SPEECH.split() + ["a", "I", "x" * 45, "supercalifragilistic,", "end."]
    sentences = [
        " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 60)))
        for _ in range(rng.randint(1, 8))
    ]
    segments, words = transcript(sentences, rng.uniform(0.05, 1.2), rng.uniform(0, 0.6))
    return segments, words, words[-1]["end_s"] + rng.uniform(0, 2)


def cue_words(cues: list[Cue]) -> list[str]:
    return [word for cue in cues for line in cue.lines for word in line.split()]


CASES = [pytest.param(*random_transcript(seed), id=f"random-{seed}") for seed in range(40)]


@pytest.mark.parametrize(("segments", "words", "duration"), CASES)
@pytest.mark.parametrize("variant", ["words", "segments only", "text without spaces"])
def test_cues_keep_every_word_once_in_order_within_the_limits(segments, words, duration, variant):
    if variant == "segments only":
        cues = build_cues(segments, (), duration)
    elif variant == "text without spaces":  # as CJK text is written: cut between the words
        unspaced = [{**segment, "text": segment["text"].replace(" ", "")} for segment in segments]
        cues = build_cues(unspaced, words, duration)
    else:
        cues = build_cues(segments, words, duration)
    spoken = [w["word"] for w in words]
    if variant == "text without spaces":
        assert "".join(cue_words(cues)) == "".join(spoken)
    else:
        assert cue_words(cues) == spoken
    for cue in cues:
        assert 1 <= len(cue.lines) <= MAX_LINES
        for line in cue.lines:
            assert len(line) <= MAX_LINE_CHARS or line in spoken, line  # or one long word
        assert 0 <= cue.start_s <= cue.end_s <= duration
        assert cue.end_s - cue.start_s <= MAX_CUE_S + 1e-9
    for before, after in zip(cues, cues[1:], strict=False):
        assert before.end_s <= after.start_s


def test_text_stays_on_one_line_when_it_fits():
    cues = build_cues(*transcript(["Please call the support desk today."]))
    assert [c.lines for c in cues] == [("Please call the support desk today.",)]


def test_cue_times_come_from_the_words():
    segments, words = transcript([SPEECH])
    cues = build_cues(segments, words)
    starts = {w["start_s"] for w in words}
    ends = {w["end_s"] for w in words}
    assert len(cues) > 1
    assert cues[0].start_s == words[0]["start_s"] and cues[-1].end_s == words[-1]["end_s"]
    assert all(c.start_s in starts and c.end_s in ends for c in cues)


def test_long_speech_is_cut_into_cues_of_at_most_seven_seconds():
    segments, words = transcript(["one two three four five six seven eight nine ten"], 0.9, 0.1)
    cues = build_cues(segments, words)
    assert len(cues) == 2
    assert all(c.end_s - c.start_s <= MAX_CUE_S for c in cues)


def test_cues_break_at_segment_ends_and_punctuation():
    first = "The warehouse shipped four hundred boxes of apples on Monday morning."
    second = "Please call the support desk before the end of the week."
    cues = build_cues(*transcript([first, second]))
    assert [" ".join(c.lines) for c in cues] == [first, second]
    cues = build_cues(*transcript([SPEECH]))
    assert [c.lines[-1][-1] for c in cues] == [",", ".", ",", "."]
    assert cues[0].lines == (
        "And so, my fellow Americans,",
        "ask not what your country can do for you,",
    )


def test_words_the_text_writes_attached_stay_attached():
    segments = [{"segment_index": 0, "start_s": 0.0, "end_s": 2.0, "text": "with self-substantial"}]
    words = [
        {"segment_index": 0, "word_index": i, "word": w, "start_s": i * 0.5, "end_s": i * 0.5 + 0.4}
        for i, w in enumerate(["with", "self", "-substantial"])
    ]
    assert build_cues(segments, words)[0].lines == ("with self-substantial",)


def test_text_without_spaces_is_cut_between_words():
    text = "今日は晴れです。明日は雨が降るでしょう、傘を持って行きましょう。" * 3
    segments = [{"segment_index": 0, "start_s": 0.0, "end_s": 6.0, "text": text}]
    words = [
        {"segment_index": 0, "word_index": i, "word": c, "start_s": i * 0.06, "end_s": i * 0.06}
        for i, c in enumerate(text)  # one word per character
    ]
    cues = build_cues(segments, words)
    assert "".join(line for c in cues for line in c.lines) == text
    assert all(len(line) <= MAX_LINE_CHARS for c in cues for line in c.lines)
    assert all(c.lines[-1][-1] in "。、" for c in cues)


def test_a_word_longer_than_a_line_is_never_split():
    long = "x" * (MAX_LINE_CHARS + 10)
    cues = build_cues(*transcript([f"see {long} here"]))
    assert cue_words(cues) == ["see", long, "here"]
    assert any(line == long for c in cues for line in c.lines)


def test_short_cues_last_the_minimum_unless_the_next_cue_or_the_file_ends_first():
    # "Yes." cannot share a cue with the next segment's two full lines.
    segments, words = transcript(["Yes.", " ".join(["abcde"] * 14)], 0.2, 0.3, start_s=1.0)
    cues = build_cues(segments, words)
    assert [c.lines[0] for c in cues] == ["Yes.", " ".join(["abcde"] * 7)]
    assert (cues[0].start_s, cues[0].end_s) == (1.0, 1.5)  # spoken until 1.2
    yes = [{"segment_index": 0, "start_s": 0.1, "end_s": 0.2, "text": "Yes."}]
    assert build_cues(yes)[0].end_s == pytest.approx(0.1 + MIN_CUE_S)
    assert build_cues(yes, duration_s=0.5)[0].end_s == 0.5


def test_overlapping_and_backward_word_times_give_ordered_cues():
    words = [
        {"segment_index": 0, "word_index": 0, "word": "late", "start_s": 5.0, "end_s": 9.0},
        {"segment_index": 0, "word_index": 1, "word": "early", "start_s": 2.0, "end_s": 2.5},
        {"segment_index": 1, "word_index": 2, "word": "after.", "start_s": 8.0, "end_s": 8.5},
    ]
    segments = [
        {"segment_index": 0, "start_s": 2.0, "end_s": 9.0, "text": "late early"},
        {"segment_index": 1, "start_s": 8.0, "end_s": 8.5, "text": "after."},
    ]
    cues = build_cues(segments, words, duration_s=8.8)
    assert cue_words(cues) == ["late", "early", "after."]
    assert all(0 <= c.start_s <= c.end_s <= 8.8 for c in cues)
    assert all(a.end_s <= b.start_s for a, b in zip(cues, cues[1:], strict=False))


def test_without_words_a_long_segment_is_split_in_proportion_to_its_characters():
    segment = {"segment_index": 0, "start_s": 10.0, "end_s": 20.0, "text": SPEECH[:170]}
    cues = build_cues([segment])
    assert len(cues) >= 2
    assert cues[0].start_s == 10.0 and cues[-1].end_s == pytest.approx(20.0)
    split = len(" ".join(cues[0].lines)) + 1
    assert cues[1].start_s == pytest.approx(10.0 + 10.0 * split / (len(SPEECH[:170]) + 1), abs=0.1)


def test_a_segment_without_words_is_timed_from_its_span_beside_timed_ones():
    segments, words = transcript(["First sentence here.", "Second one follows."])
    untimed = [w for w in words if w["segment_index"] == 0]
    cues = build_cues(segments, untimed)
    assert cue_words(cues) == "First sentence here. Second one follows.".split()


def test_no_text_no_cues():
    assert build_cues([]) == []
    assert build_cues([{"segment_index": 0, "start_s": 0.0, "end_s": 1.0, "text": " "}]) == []
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n"


CUES = [Cue(0.5, 2.0, ("Hello there,", "general Kenobi.")), Cue(3661.0126, 3662.5, ("Bye.",))]


def test_srt_rendering():
    assert to_srt(CUES) == (
        "1\n00:00:00,500 --> 00:00:02,000\nHello there,\ngeneral Kenobi.\n\n"
        "2\n01:01:01,013 --> 01:01:02,500\nBye.\n"
    )


def test_vtt_rendering_escapes_markup():
    assert to_vtt(CUES) == (
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nHello there,\ngeneral Kenobi.\n\n"
        "01:01:01.013 --> 01:01:02.500\nBye.\n"
    )
    assert to_vtt([Cue(0, 1, ("a <b> & c --> d",))]).endswith("a &lt;b&gt; &amp; c --&gt; d\n")


ODD_NAMES = [
    "plain.wav",
    "with spaces and CAPS.WAV",
    "Telephone Calls/ünïcödé call 8k.WAV",
    "deep/nested/folders/clip.mp3",
    "../../escape.wav",
    "a/../b.wav",
    "..",
    ".hidden/.wav",
    "日本語の録音.wav",
    "emoji 🎤 take 2.flac",
    "quotes 'and' \"double\" & <angle>|pipe?*.wav",
    "back\\slash\\name.wav",
    "tab\tnew\nline.wav",
    "CON",
    "x" * 400 + ".wav",
    "-leading-dash.wav",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_export_names_are_safe(name):
    stem = export_stem(name, "0123456789abcdef")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*-01234567", stem), stem
    assert ".." not in stem and len(stem) <= EXPORT_SLUG_MAX_CHARS + 1 + EXPORT_ID_CHARS


def test_export_names_stay_readable():
    assert (
        export_slug("Telephone Calls/ünïcödé call 8k.WAV") == "Telephone_Calls_unicode_call_8k.WAV"
    )
    assert export_slug("speech/hi-res 96k stereo.flac") == "speech_hi-res_96k_stereo.flac"
    assert export_slug("日本語.wav") == "wav" and export_slug("日本語") == "audio"


def test_export_names_are_unique_even_ignoring_case():
    names = ODD_NAMES + ["Plain.wav", "PLAIN.WAV", "plain?.wav", "plain*.wav", "speech/a b.wav"]
    names += ["speech/a_b.wav", "speech_a b.wav", "x" * 400 + ".mp3"]
    files = [(f"{i + 1:08x}" * 2, name) for i, name in enumerate(names)]
    # Same slug and same first 8 hex characters: only the full id tells them apart.
    files += [("00000000aaaaaaaa", "twin.wav"), ("00000000bbbbbbbb", "Twin.wav")]
    stems = export_stems(files)
    assert len({stem.lower() for stem in stems.values()}) == len(files)
    assert stems["00000000aaaaaaaa"] == "twin.wav-00000000aaaaaaaa"
    assert stems["0000000100000001"] == "plain.wav-00000001"


def test_export_names_need_a_hex_file_id():
    with pytest.raises(ValueError, match="lowercase hex"):
        export_stem("a.wav", "../etc")
    with pytest.raises(ValueError, match="distinct"):
        export_stems([("ab", "a.wav"), ("ab", "b.wav")])


PARTITION = "2026-11-19"
LANDED = {
    "jfk.flac": "short/jfk.flac",
    "Telephone Calls/ünïcödé call 8k.flac": "short/jfk.flac",
    "with spaces.wav": "short/lj001_0001.wav",
    "With Spaces.wav": "short/lj001_0002.wav",
}


def land(corpus: Path, root: Path) -> Path:
    landing = root / "raw" / PARTITION
    for name, source in LANDED.items():
        (landing / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / source, landing / name)
    soundfile.write(landing / "silence.wav", np.zeros(16000 * 3), 16000)  # no_speech
    (landing / "notes.mp3").write_bytes(b"not audio\n" * 50)  # failed
    return landing


def milliseconds(timestamp: str) -> int:
    """``HH:MM:SS.mmm`` as milliseconds (webvtt-py's ``start_in_seconds`` drops them)."""
    hours, minutes, seconds = timestamp.split(":")
    return round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)


def read_exports(folder: Path, stem: str) -> tuple[list[tuple[int, int, str]], list]:
    """(start ms, end ms, text) of each SRT cue by pysubs2, and each WebVTT cue by webvtt-py."""
    srt = pysubs2.load(str(folder / f"{stem}.srt"), encoding="utf-8", format_="srt")
    vtt = webvtt.read(str(folder / f"{stem}.vtt"))
    srt_cues = [(e.start, e.end, e.plaintext) for e in srt.events]
    vtt_cues = [(milliseconds(c.start), milliseconds(c.end), c.text) for c in vtt]
    return srt_cues, vtt_cues


def test_asset_writes_parseable_subtitles_and_removes_those_of_deleted_files(corpus, tmp_path):
    root = tmp_path / "root"
    landing = land(corpus, root)
    result = materialize(root, PARTITION)
    assert result.success, step_failures(result)
    tables = read_tables(root, PARTITION)
    folder = root / "exports" / "subtitles" / f"date={PARTITION}"
    files = {r["relative_path"]: r for r in tables["audio_files"]}
    assert (
        files["silence.wav"]["status"] == "no_speech" and files["notes.mp3"]["status"] == "failed"
    )
    stems = export_stems((r["file_id"], r["relative_path"]) for r in tables["audio_files"])
    ok = [r for r in tables["audio_files"] if r["status"] == "ok"]
    assert len(ok) == len(LANDED)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        stems[r["file_id"]] + ext for r in ok for ext in (".srt", ".vtt")
    )
    for row in ok:
        words = [w for w in tables["transcript_words"] if w["file_id"] == row["file_id"]]
        segments = [s for s in tables["transcript_segments"] if s["file_id"] == row["file_id"]]
        assert words, "the test double gives every segment its words"
        expected = build_cues(segments, words, row["duration_s"])
        srt_cues, vtt_cues = read_exports(folder, stems[row["file_id"]])
        assert len(srt_cues) == len(vtt_cues) == len(expected)
        assert (
            [t for _, _, t in srt_cues] == [t for _, _, t in vtt_cues] == [c.text for c in expected]
        )
        assert [(s, e) for s, e, _ in srt_cues] == [(s, e) for s, e, _ in vtt_cues]
        assert " ".join(t for _, _, t in srt_cues).split() == [
            w["word"] for w in sorted(words, key=lambda w: w["word_index"])
        ]
        assert srt_cues[0][0] == round(words[0]["start_s"] * 1000)
    materialization = result.asset_materializations_for_node("subtitle_files")[0]
    assert materialization.metadata["files_written"].value == 2 * len(ok)

    gone = files["with spaces.wav"]
    (landing / "with spaces.wav").unlink()
    (folder / "leftover.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nold\n")
    result = materialize(root, PARTITION)
    assert result.success, step_failures(result)
    remaining = sorted(p.name for p in folder.iterdir())
    assert len(remaining) == 2 * (len(ok) - 1)
    assert not any(name.startswith(stems[gone["file_id"]]) for name in remaining)
    assert "leftover.srt" not in remaining

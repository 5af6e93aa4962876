"""An input set of any length made of distinct audio: speed- and pitch-perturbed corpus copies.

Every file of the corpus (``../shared/corpus``, 82 files, 1212 s) is copied once per
*variant*, in a fixed order of variants, until the copies add up to the hours asked for. A
variant is ``(speed, semitones)``:

- ``speed`` resamples time and pitch together (Kaldi-style speed perturbation:
  ``asetrate=rate*speed``); a copy lasts ``duration / speed`` seconds;
- ``semitones`` then shifts the pitch alone by ``2**(semitones / 12)`` (``asetrate`` up, ``atempo``
  back down to the same tempo).

Both change every sample, so every copy has content of its own (the pipeline transcribes each
distinct content once), and the words are the corpus file's: its reference text applies to every
copy. The first variants are the plain speed factors 0.9, 0.95, 1.05 and 1.1, then +-2 semitones
at speed 1 (2 hours: these six, 492 files); longer sets go on with ``VARIANTS``'s other
combinations (at most ``max_hours()``).

Copies are FLAC (16-bit) at the original's sample rate and channel layout, written with PyAV's
filter graph (``asetrate``, ``atempo``, ``aresample``, ``aformat``; no sox or ffmpeg binary), to
``OUT/<variant>/<corpus name>.flac`` (``.flac`` appended unless there: ``formats/jfk.mp3.flac``; the
corpus holds one recording in several containers). Output is deterministic; a copy is made
only when it is missing, and ``OUT/manifest.json`` keeps each copy's duration.

    python -m benchmarks.perturbed --hours 2 --out benchmarks/out/perturbed
"""

import argparse
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, AudioInput, load_corpus

DEFAULT_CACHE = DEFAULT_OUT / "perturbed"


@dataclass(frozen=True)
class Variant:
    """One perturbation applied to every corpus file.

    Attributes:
        speed: Playback-rate factor (time and pitch); a copy lasts ``duration / speed`` s.
        semitones: Pitch shift at constant tempo, in semitones (0: none).
    """

    speed: float
    semitones: int

    @property
    def name(self) -> str:
        """Folder name of the variant's copies, e.g. ``speed0.90_semitones+0``."""
        return f"speed{self.speed:.2f}_semitones{self.semitones:+d}"

    def filters(self, rate: int) -> list[tuple[str, str]]:
        """PyAV filter chain ``[(filter, arguments), ...]`` for input at ``rate`` Hz.

        ``asetrate`` relabels the sample rate (speed and pitch by the factor), ``atempo`` undoes
        the tempo change of the pitch shift, ``aresample`` returns to ``rate`` Hz and
        ``aformat`` gives the FLAC encoder 16-bit samples.
        """
        pitch = 2.0 ** (self.semitones / 12)
        chain = [("asetrate", str(round(rate * self.speed * pitch)))]
        if self.semitones:
            chain.append(("atempo", f"{1 / pitch:.6f}"))
        return chain + [("aresample", str(rate)), ("aformat", "sample_fmts=s16")]


_FIRST = [Variant(s, 0) for s in (0.9, 0.95, 1.05, 1.1)] + [Variant(1.0, 2), Variant(1.0, -2)]
_SPEEDS = (1.0, 0.9, 1.1, 0.95, 1.05, 0.85, 1.15, 0.92, 1.08)
_SEMITONES = (0, 2, -2, 1, -1, 3, -3)

VARIANTS: tuple[Variant, ...] = tuple(
    _FIRST
    + [
        variant
        for semitones, speed in itertools.product(_SEMITONES, _SPEEDS)
        if (variant := Variant(speed, semitones)) not in _FIRST and (speed, semitones) != (1.0, 0)
    ]
)
"""Every variant, in the order sets take them: 62 (nine speeds times seven pitch shifts, less
the unperturbed original)."""


def max_hours(corpus_s: float = 1212.0) -> float:
    """Hours of audio all of ``VARIANTS`` make of a corpus of ``corpus_s`` seconds (~20.7 h)."""
    return sum(corpus_s / variant.speed for variant in VARIANTS) / 3600


def encode_copy(source: str, target: Path, variant: Variant, tag: str = "") -> float:
    """Write ``variant`` of ``source`` to ``target`` as 16-bit FLAC; returns its duration in s.

    ``tag`` goes in the FLAC ``comment`` field. The corpus holds a few recordings in several
    sample formats (``one_two_three_44k_s16.wav`` and ``_s32.wav``) whose speed-only copies are
    the same samples; the tag (the copy's name) keeps their files, and so their content hashes,
    apart.

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a partial copy that later runs would take as done.

    Raises:
        av.error.FFmpegError: PyAV cannot decode ``source`` or encode the copy.
    """
    import av

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    samples = 0
    with av.open(source) as container, av.open(str(partial), "w", format="flac") as output:
        stream = container.streams.audio[0]
        rate, layout = stream.codec_context.sample_rate, stream.codec_context.layout.name
        graph = av.filter.Graph()
        nodes = [graph.add_abuffer(template=stream)]
        nodes += [graph.add(name, arguments) for name, arguments in variant.filters(rate)]
        nodes.append(graph.add("abuffersink"))
        graph.link_nodes(*nodes).configure()
        output.metadata["comment"] = tag
        encoded = output.add_stream("flac", rate=rate, layout=layout)
        encoded.format = "s16"

        def drain() -> None:
            nonlocal samples
            while True:
                try:
                    frame = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    return
                samples += frame.samples
                frame.pts = None
                output.mux(encoded.encode(frame))

        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                # A frame FFmpeg rejects is skipped, as the pipeline's ``core.audio`` decoder
                # does (one corpus file has such frames).
                continue
            for frame in frames:
                graph.push(frame)
                drain()
        graph.push(None)
        drain()
        output.mux(encoded.encode(None))
    os.replace(partial, target)
    return samples / rate


def perturbed_set(hours: float, out: Path = DEFAULT_CACHE) -> list[AudioInput]:
    """At least ``hours`` of distinct audio: corpus copies, variant after variant, file by file.

    Copies are taken in ``VARIANTS`` order, every corpus file of a variant before the next
    variant, until their durations reach ``hours * 3600`` s; missing copies are written first
    (``encode_copy``). The same ``hours`` always gives the same files.

    Args:
        hours: Audio to reach, in hours (> 0, at most ``max_hours()``).
        out: Cache folder of the copies and their ``manifest.json``.

    Returns:
        The copies, each with its corpus file's reference and language; ``name`` is
        ``<variant>/<corpus name>.flac``, relative to ``out``.

    Raises:
        ValueError: ``hours`` is not positive or exceeds what ``VARIANTS`` can make.
        FileNotFoundError: The corpus manifest does not exist.
    """
    corpus = load_corpus(None)
    target_s = hours * 3600
    available = max_hours(sum(item.duration_s for item in corpus))
    if not 0 < hours <= available:
        raise ValueError(f"hours must be in (0, {available:.1f}], got {hours}")
    manifest_path = out / "manifest.json"
    durations: dict[str, float] = {}
    if manifest_path.exists():
        durations = json.loads(manifest_path.read_text())
    chosen: list[AudioInput] = []
    total_s = 0.0
    written = 0
    for variant, item in ((v, i) for v in VARIANTS for i in corpus):
        if total_s >= target_s:
            break
        flac = item.name if item.name.endswith(".flac") else f"{item.name}.flac"
        name = f"{variant.name}/{flac}"
        path = out / name
        if name not in durations or not path.exists():
            durations[name] = encode_copy(item.path, path, variant, name)
            written += 1
            if written % 50 == 0:  # progress survives an interruption
                manifest_path.write_text(json.dumps(durations, indent=0, sort_keys=True))
        chosen.append(AudioInput(name, str(path.resolve()), item.reference, item.language,
                                 durations[name]))  # fmt: skip
        total_s += durations[name]
    if written:
        manifest_path.write_text(json.dumps(durations, indent=0, sort_keys=True))
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Make (or find) the set and print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="audio to reach, hours")
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE, help="cache folder")
    args = parser.parse_args(argv)
    inputs = perturbed_set(args.hours, args.out.resolve())
    total_s = sum(item.duration_s for item in inputs)
    variants = len({item.name.split("/", 1)[0] for item in inputs})
    print(
        f"{len(inputs)} files, {total_s:.1f} s ({total_s / 3600:.2f} h) of audio, "
        f"{variants} variant(s), in {args.out}"
    )
    return 0 if total_s >= args.hours * 3600 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""One CTranslate2 ``Whisper.generate`` call over a batch of encoder outputs, as ``Row``s.

Prompts (the start sequence, with each row's language on multilingual models), beam search at
temperature 0 or sampling ``best_of`` candidates above it, the token budget of the call
(``Decoder.max_length``), and each row's average log-probability recovered from CTranslate2's
length-normalised score as faster-whisper's ``generate_with_fallback`` does. Options are
identical for every row of a call (CTranslate2 needs them so). Thread-safe: worker threads
share one ``Decoder``.
"""

import math
import threading

import ctranslate2
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from whisper_pipeline.core.types import MAX_TOKENS_BASE, DecodingOptions
from whisper_pipeline.core.windows import Language, Row


class Decoder:
    """Runs ``generate`` calls of a model with fixed decoding options.

    Args:
        model: The faster-whisper model; its CTranslate2 ``model.model`` is looked up at
            every call.
        tokenizer: The tokenizer whose start sequence prompts every row.
        options: Decoding options, identical for every row.

    Attributes:
        calls: ``generate`` calls made.
        suppress_tokens: Token ids never generated: Whisper's non-speech symbols (``-1``, as
            in faster-whisper's ``transcribe``).
    """

    def __init__(self, model: WhisperModel, tokenizer: Tokenizer, options: DecodingOptions):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.suppress_tokens = get_suppressed_tokens(tokenizer, [-1])
        self.calls = 0
        self._lock = threading.Lock()

    def max_length(self, prompt_length: int, frames: int) -> int:
        """Largest sequence (prompt included) a call whose longest window has ``frames`` may make.

        ``prompt_length + MAX_TOKENS_BASE + max_tokens_per_second * seconds``, rounded up, at
        most the model's ``max_length`` (448, faster-whisper's default for every call).
        """
        limit = self.model.max_length
        if self.options.max_tokens_per_second is None:
            return limit
        seconds = frames / self.model.frames_per_second
        budget = MAX_TOKENS_BASE + math.ceil(self.options.max_tokens_per_second * seconds)
        return min(limit, prompt_length + budget)

    def generate(
        self,
        encoder_output,
        languages: list[Language],
        temperature: float,
        frames: int,
        model: ctranslate2.models.Whisper | None = None,
    ) -> list[Row]:
        """Decode a batch at one temperature.

        Args:
            encoder_output: CTranslate2 ``StorageView``, shape ``(batch, 1500, d_model)``.
            languages: Per row, its language (the prompt names it on multilingual models).
            temperature: 0 for beam search (``beam_size``), else sampling ``best_of``.
            frames: Feature frames of the longest window of the batch (the token budget).
            model: The CTranslate2 model that decodes; default the faster-whisper model's.

        Returns:
            A ``Row`` per input row, in order.
        """
        options = self.options
        prompt = self.model.get_prompt(self.tokenizer, previous_tokens=[])
        prompts = []
        for language, _ in languages:
            row_prompt = list(prompt)
            if self.model.model.is_multilingual:
                # sot_sequence is [<|startoftranscript|>, <|lang|>, <|transcribe|>].
                row_prompt[1] = self.tokenizer.tokenizer.token_to_id(f"<|{language}|>")
            prompts.append(row_prompt)
        if temperature > 0:
            sampling = {
                "beam_size": 1,
                "num_hypotheses": options.best_of,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            sampling = {"beam_size": options.beam_size}
        with self._lock:
            self.calls += 1
        results = (model or self.model.model).generate(
            encoder_output,
            prompts,
            length_penalty=options.length_penalty,
            max_length=self.max_length(len(prompt), frames),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress_tokens,
            max_initial_timestamp_index=round(
                options.max_initial_timestamp_s / self.model.time_precision
            ),
            **sampling,
        )
        return [self._row(result, temperature) for result in results]

    def _row(self, result, temperature: float) -> Row:
        """A ``Row`` from a CTranslate2 ``WhisperGenerationResult``."""
        tokens = result.sequences_ids[0]
        # Recover the average log-probability from CTranslate2's length-normalised score,
        # as faster-whisper's generate_with_fallback does.
        seq_len = len(tokens)
        cum_logprob = result.scores[0] * (seq_len**self.options.length_penalty)
        text = self.tokenizer.decode(tokens).strip()
        return Row(
            tokens=tokens,
            avg_logprob=cum_logprob / (seq_len + 1),
            no_speech_prob=result.no_speech_prob,
            compression_ratio=get_compression_ratio(text),
            temperature=temperature,
            text=text,
        )

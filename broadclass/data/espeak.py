"""eSpeak NG through ctypes: speech samples and IPA phonemes for a text and a voice.

The library and its data come from the ``espeakng-loader`` wheel (libespeak-ng 1.52 + espeak-ng-data),
so no system package or CLI is needed. eSpeak keeps its state in globals (one voice, one set of
parameters, one callback per process), so there is one :class:`ESpeak` per process and a lock around
every call that sets state and then uses it.

Voices are ``<language>[+<variant>]`` names as eSpeak knows them: ``en-us``, ``en`` (British; 1.52
rejects ``en-gb``), ``en-gb-scotland``, ``en-029``, with variants such as ``+m3``, ``+f2``,
``+whisper``, ``+croak`` (files in ``espeak-ng-data/voices/!v``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when data is missing
# Phoneme events (with IPA names) in the synth callback: the phone timings of what was synthesised.
ESPEAK_INITIALIZE_PHONEME_EVENTS = 0x0001
ESPEAK_INITIALIZE_PHONEME_IPA = 0x0002
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
CHARS_UTF8 = 1
POS_CHARACTER = 1
PHONEMES_IPA = 0x02
PHONEME_SEPARATOR = "."  # never part of an eSpeak IPA phoneme, so splitting on it is safe
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4
EE_OK = 0


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h; ``id`` is a union whose ``char string[8]`` holds a phoneme's name."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class ESpeakError(RuntimeError):
    """eSpeak could not be loaded or refused a voice or a text; the message says which."""


class ESpeak:
    """The process's eSpeak NG instance (synchronous output, 22,050 Hz, 16-bit mono).

    ``ESpeak()`` returns the same object every time: eSpeak cannot hold two configurations in one
    process, and initialising it again would only reload its data.
    """

    _instance: ESpeak | None = None
    _create_lock = threading.Lock()

    sample_rate: int
    version: str
    data_path: Path

    def __new__(cls) -> ESpeak:
        with cls._create_lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._load()
                cls._instance = instance
            return cls._instance

    def _load(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise ESpeakError(
                "eSpeak NG is not installed: pip install espeakng-loader==0.2.4 (it ships libespeak-ng and its data)"
            ) from err
        library_path = espeakng_loader.get_library_path()
        try:
            self.data_path = Path(espeakng_loader.get_data_path())
        except RuntimeError as err:
            raise ESpeakError(f"espeak-ng-data is missing from the espeakng-loader package: {err}") from err
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as err:
            raise ESpeakError(f"cannot load libespeak-ng from {library_path}: {err}") from err

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p

        options = ESPEAK_INITIALIZE_DONT_EXIT | ESPEAK_INITIALIZE_PHONEME_EVENTS | ESPEAK_INITIALIZE_PHONEME_IPA
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), options)
        if rate <= 0:
            raise ESpeakError(f"espeak_Initialize failed (returned {rate}) with data at {self.data_path}")
        self.sample_rate = rate
        self.version = lib.espeak_Info(None).decode()
        self._lib = lib
        # Breath noise (whisper and breathy variants) draws from eSpeak's own generator and from libc
        # rand(); both are reseeded before every utterance, so the noise depends on the utterance's seed
        # and not on whatever else in the process called rand().
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name) if libc_name else None
        self._chunks: list[bytes] = []
        self._phones: list[tuple[str, float]] = []
        # ctypes does not keep the function pointer alive: without this reference the callback would
        # be garbage-collected while eSpeak still calls it.
        self._callback = _SynthCallback(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        self._voice: str | None = None

    def _on_samples(self, wav: ctypes._Pointer, count: int, events: ctypes._Pointer) -> int:
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        i = 0
        while events and events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                name = bytes(events[i].id).split(b"\0", 1)[0].decode("utf-8", errors="replace")
                self._phones.append((name, events[i].audio_position / 1000))
            i += 1
        return 0  # 0 = keep synthesising

    def _set_voice(self, voice: str) -> None:
        if voice == self._voice:
            return
        language, _, variant = voice.partition("+")
        # eSpeak ignores an unknown variant silently, which would mislabel the audio: check the file.
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            raise ESpeakError(f"eSpeak voice {voice!r}: no variant {variant!r} in {self.data_path / 'voices' / '!v'}")
        status = self._lib.espeak_SetVoiceByName(voice.encode())
        if status != EE_OK:
            hint = " (eSpeak 1.52 calls British English 'en', not 'en-gb')" if language.lower() == "en-gb" else ""
            raise ESpeakError(f"eSpeak voice {voice!r} could not be set (error {status}){hint}")
        self._voice = voice

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50, *, seed: int = 0) -> np.ndarray:
        """16-bit samples at :attr:`sample_rate` for ``text`` spoken by ``voice`` (see :meth:`synthesize_timed`)."""
        return self.synthesize_timed(text, voice, rate, pitch, seed=seed)[0]

    def synthesize_timed(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, *, seed: int = 0
    ) -> tuple[np.ndarray, list[tuple[str, float]]]:
        """16-bit samples at :attr:`sample_rate` for ``text`` spoken by ``voice``, and the phones eSpeak
        rendered: ``(IPA name, start in seconds)`` from its phoneme events, in order (pauses are ``_``).

        ``rate`` is in words per minute (80–450), ``pitch`` 0–100 within the voice's own pitch range.
        ``seed`` fixes the breath noise. eSpeak also carries oscillator phase and pitch flutter from one
        utterance to the next, so samples are byte-identical only for the same sequence of calls since
        the library was loaded (a fresh process): :func:`broadclass.data.demo.build_demo_corpus` renders
        in one for that reason.
        """
        if not text.strip():
            raise ESpeakError("cannot synthesise an empty text")
        encoded = text.encode("utf-8") + b"\0"
        with self._lock:
            self._set_voice(voice)
            for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, 50)):
                if self._lib.espeak_SetParameter(param, int(value), 0) != EE_OK:
                    raise ESpeakError(f"eSpeak rejected parameter {param}={value} for voice {voice!r}")
            self._lib.espeak_ng_SetRandSeed(seed)
            if self._libc is not None:
                self._libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
            self._chunks, self._phones = [], []
            status = self._lib.espeak_Synth(encoded, len(encoded), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if status == EE_OK:
                status = self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
            phones, self._phones = self._phones, []
        if status != EE_OK:
            raise ESpeakError(f"espeak_Synth failed (error {status}) for voice {voice!r}, text {text!r}")
        return np.frombuffer(b"".join(chunks), dtype=np.int16).copy(), phones

    def phonemes(self, text: str, voice: str) -> list[list[str]]:
        """IPA phonemes of ``text`` as ``voice``'s accent says them: one list of phoneme units per word.

        Units keep eSpeak's stress and length marks (``ˈoʊ``); diphthongs and affricates are single
        units. eSpeak sometimes joins short words (``in the`` → one word): its words are kept as they are.
        """
        encoded = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(encoded))
        mode = PHONEMES_IPA | (ord(PHONEME_SEPARATOR) << 8)
        clauses: list[str] = []
        with self._lock:
            self._set_voice(voice)
            # One call per clause; eSpeak sets the pointer to NULL after the last one.
            while pointer.value:
                result = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), CHARS_UTF8, mode)
                if result:
                    clauses.append(result.decode("utf-8"))
        words = []
        for clause in clauses:
            for word in clause.split():
                units = [unit for unit in word.split(PHONEME_SEPARATOR) if unit]
                if units:
                    words.append(units)
        return words

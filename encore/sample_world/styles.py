"""The latent styles that drive everything in the sample world.

A style fixes a track's tempo range, key mode, timbre (brightness, synthetic vs acoustic,
distortion), drums, duration, lyric vocabulary and lyric mood. Genes, audio and lyrics are all
drawn from a track's style, so content carries the same signal that listening does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from encore.core.schemas import GENE_SCALE, GENES


@dataclass(frozen=True)
class Style:
    name: str
    tempo_bpm: float  # centre of the style's tempo
    major: float  # probability a track is in a major key
    brightness: float  # 0 = sine-like, 1 = many strong harmonics
    percussive: float  # drum level, 0..1
    synthetic: float  # synthesizers / drum machines vs played instruments
    acoustic: float  # acoustic instruments
    distortion: float  # grit: saturating the signal, guitar distortion
    instrumental: float  # probability a track has no lyrics
    duration_s: float  # median track length
    mood: dict[str, float]  # lyric genes this style leans to
    words: tuple[str, ...]  # lyric vocabulary


STYLES: tuple[Style, ...] = (
    Style("synthpop", 118, 0.75, 0.70, 0.6, 0.95, 0.05, 0.10, 0.05, 225,
          {"lyrics_love": 0.8, "lyrics_happy": 0.6},
          ("neon", "electric", "dancing", "lights", "tonight", "signal", "mirror", "glow", "satellite",
           "heartbeat", "silver", "radio", "dream", "city", "chrome")),
    Style("punk", 172, 0.55, 0.85, 0.9, 0.05, 0.10, 0.90, 0.02, 150,
          {"lyrics_angry": 0.9, "lyrics_social_political": 0.8, "lyrics_explicit": 0.6},
          ("riot", "system", "burn", "street", "scream", "never", "rules", "broken", "fight", "wall",
           "noise", "youth", "against", "concrete", "kick")),
    Style("jazz", 132, 0.60, 0.45, 0.5, 0.05, 0.85, 0.05, 0.45, 330,
          {"lyrics_love": 0.6, "lyrics_sad": 0.4},
          ("blue", "smoke", "velvet", "moonlight", "swing", "cocktail", "saxophone", "lonely", "avenue",
           "whisper", "midnight", "stardust", "rain", "melody", "café")),
    Style("folk", 100, 0.70, 0.35, 0.2, 0.00, 0.95, 0.00, 0.05, 240,
          {"lyrics_sad": 0.6, "lyrics_abstract": 0.4},
          ("river", "mountain", "harvest", "wind", "home", "mother", "road", "field", "winter", "fire",
           "old", "valley", "wooden", "letter", "sparrow")),
    Style("techno", 130, 0.35, 0.80, 0.95, 1.00, 0.00, 0.30, 0.85, 390,
          {"lyrics_abstract": 0.8},
          ("machine", "pulse", "circuit", "system", "loop", "frequency", "data", "motion", "tunnel",
           "warehouse", "voltage", "grid", "sequence", "zero", "transmit")),
    Style("hiphop", 92, 0.40, 0.55, 0.85, 0.60, 0.10, 0.20, 0.03, 235,
          {"lyrics_explicit": 0.8, "lyrics_social_political": 0.5, "lyrics_humorous": 0.4},
          ("block", "money", "crew", "hustle", "rhyme", "corner", "flow", "game", "real", "verse",
           "chain", "hood", "mic", "grind", "beat")),
    Style("classical", 84, 0.60, 0.30, 0.05, 0.00, 1.00, 0.00, 0.95, 420,
          {"lyrics_abstract": 0.5, "lyrics_sad": 0.4},
          ("aria", "requiem", "gloria", "spring", "sonata", "eternal", "heaven", "grace", "light",
           "choir", "angel", "sorrow", "dawn", "psalm", "ode")),
    Style("metal", 150, 0.20, 0.95, 0.95, 0.05, 0.00, 1.00, 0.05, 300,
          {"lyrics_angry": 0.9, "lyrics_abstract": 0.5},
          ("darkness", "steel", "blood", "throne", "thunder", "iron", "grave", "serpent", "storm", "black",
           "chaos", "fury", "crypt", "doom", "flames")),
    Style("soul", 98, 0.65, 0.45, 0.6, 0.10, 0.70, 0.15, 0.03, 215,
          {"lyrics_love": 0.9, "lyrics_happy": 0.5, "lyrics_sad": 0.4},
          ("baby", "honey", "soul", "sweet", "hold", "darling", "gospel", "tender", "yearning", "sugar",
           "deep", "forever", "preacher", "warm", "lover")),
    Style("reggae", 76, 0.70, 0.50, 0.7, 0.20, 0.50, 0.10, 0.10, 235,
          {"lyrics_social_political": 0.7, "lyrics_happy": 0.6},
          ("island", "sun", "jah", "babylon", "rhythm", "roots", "freedom", "zion", "one", "love",
           "shine", "irie", "people", "rise", "ocean")),
    Style("ambient", 70, 0.55, 0.20, 0.05, 0.80, 0.20, 0.00, 0.90, 420,
          {"lyrics_abstract": 0.9},
          ("drift", "cloud", "horizon", "breath", "tide", "echo", "still", "glacier", "orbit", "haze",
           "slow", "static", "aurora", "silence", "float")),
    Style("indie", 122, 0.60, 0.60, 0.65, 0.25, 0.50, 0.45, 0.05, 215,
          {"lyrics_sad": 0.5, "lyrics_abstract": 0.6, "lyrics_humorous": 0.3},
          ("bicycle", "summer", "awkward", "basement", "postcard", "teenage", "holiday", "coffee", "ghost",
           "paper", "airport", "strange", "garden", "polaroid", "weekend")),
)

COMMON_WORDS = (
    "the", "you", "i", "we", "my", "your", "in", "on", "and", "so", "love", "night", "time", "heart",
    "world", "down", "away", "again", "never", "always", "feel", "know", "go", "come", "all", "now",
)

# How often artists of each style exist: pop-ish styles dominate, niches form the long tail.
STYLE_SHARE = np.array([0.13, 0.07, 0.06, 0.08, 0.08, 0.12, 0.04, 0.07, 0.08, 0.05, 0.04, 0.18])

_IDX = {g: i for i, g in enumerate(GENES)}


def gene_prototypes(rng: np.random.Generator) -> np.ndarray:
    """One prototype gene vector per style, ``(n_styles, 58)`` in [0, 1].

    Genes with no stated link to a style attribute get a random (but seeded) level per style; the
    rest follow the style's attributes so genes agree with the audio and lyrics drawn from it.
    """
    protos = rng.beta(1.5, 2.5, size=(len(STYLES), len(GENES)))
    for k, s in enumerate(STYLES):
        p = protos[k]
        linked = {
            "tempo": (s.tempo_bpm - 60) / 140,
            "major_key_tonality": s.major,
            "synthesizer": s.synthetic, "synthetic_sonority": s.synthetic,
            "synthetic_drums": s.synthetic * s.percussive,
            "synth_timbre": s.synthetic * s.brightness,
            "acoustic_guitar": s.acoustic * 0.8, "acoustic_sonority": s.acoustic,
            "electric_guitar": s.distortion * 0.9, "guitar_distortion": s.distortion,
            "electric_sonority": max(s.distortion, 1 - s.acoustic - s.synthetic),
            "aural_intensity": 0.5 * s.distortion + 0.5 * s.percussive,
            "drum_set": s.percussive, "drum_aggressiveness": s.percussive * s.distortion,
            "percussion": s.percussive * 0.7,
            "danceability": 0.6 * s.percussive + 0.4 * (1 - abs(s.tempo_bpm - 120) / 60),
            "focus_lead_vocal": 1 - s.instrumental, "focus_lyrics": 1 - s.instrumental,
            "focus_rhythmic_groove": s.percussive,
            "string_ensemble": s.acoustic * (1 - s.percussive),
        }
        for gene, value in {**linked, **s.mood}.items():
            p[_IDX[gene]] = value
        for gene in ("lyrics_angry", "lyrics_sad", "lyrics_happy", "lyrics_humorous", "lyrics_love",
                     "lyrics_social_political", "lyrics_abstract", "lyrics_explicit"):
            if gene not in s.mood:
                p[_IDX[gene]] = 0.1
    return np.clip(protos, 0.0, 1.0)


def track_genes(protos: np.ndarray, style: np.ndarray, tempo: np.ndarray, major: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Per-track genes ``(n_tracks, 58)``: the style prototype plus noise, quantised to the 0-5 scale.

    Tempo and key come from the track's own audio parameters, so those genes match its clip.
    """
    g = protos[style] + rng.normal(0.0, 0.09, size=(len(style), protos.shape[1]))
    g[:, _IDX["tempo"]] = (tempo - 60) / 140 + rng.normal(0, 0.03, len(style))
    g[:, _IDX["major_key_tonality"]] = np.where(major, 0.85, 0.15) + rng.normal(0, 0.05, len(style))
    g = np.clip(g, 0.0, 1.0)
    return (np.rint(g * GENE_SCALE) / GENE_SCALE).astype(np.float32)

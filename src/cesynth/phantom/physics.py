"""MR physics of the phantom: tissue parameters, signal equations, bias field and Rician noise.

Every tissue gets T1, T2, proton density, ADC and a contrast-agent concentration drawn within the
SPEC's 3 T ranges; the images follow the SPGR (T1w, CE-T1), spin-echo (T2w), inversion-recovery
spin-echo with the CSF nulled (FLAIR) and diffusion (DWI) signal equations, scaled so that white
matter sits at a plausible scanner level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

B_VALUES = (0.0, 500.0, 500.0, 500.0, 1000.0, 1000.0, 1000.0)
# Acquisition parameters (ms, degrees) actually used for the images.
SPGR = {"tr_ms": 8.0, "te_ms": 3.0, "flip_deg": 12.0}
T2_SE = {"tr_ms": 4000.0, "te_ms": 100.0}
DWI_SE = {"tr_ms": 5000.0, "te_ms": 80.0}
GADOLINIUM_R1_PER_MM_S = 4.0
FLAIR_TR_MS = 9000.0
# Signal level of white matter after scaling (b = 0 for DWI): a plausible scanner range.
WM_SCANNER_SIGNAL = 1000.0

# SPEC "Phantom physics" table: (low, high) per parameter; ADC in mm2/s, agent in mM. ``solid``
# is the solid enhancing (metastasis-like) lesion, ``lgg`` the non-enhancing low-grade-glioma-like
# lesion, ``gliosis`` the treatment-effect T2 abnormality.
TISSUE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "wm": {"t1_ms": (830, 1100), "t2_ms": (70, 80), "pd": (0.69, 0.69),
           "adc_mm2_s": (0.70e-3, 0.80e-3), "agent_mM": (0, 0)},
    "gm": {"t1_ms": (1300, 1800), "t2_ms": (80, 110), "pd": (0.80, 0.80),
           "adc_mm2_s": (0.80e-3, 0.90e-3), "agent_mM": (0, 0)},
    "csf": {"t1_ms": (4000, 4500), "t2_ms": (1500, 2000), "pd": (1.0, 1.0),
            "adc_mm2_s": (3.0e-3, 3.0e-3), "agent_mM": (0, 0)},
    "edema": {"t1_ms": (1800, 2200), "t2_ms": (150, 250), "pd": (0.85, 0.85),
              "adc_mm2_s": (1.3e-3, 1.6e-3), "agent_mM": (0, 0)},
    "rim": {"t1_ms": (1500, 2000), "t2_ms": (100, 150), "pd": (0.85, 0.85),
            "adc_mm2_s": (1.0e-3, 1.3e-3), "agent_mM": (0.1, 0.5)},
    "core": {"t1_ms": (2500, 3000), "t2_ms": (200, 300), "pd": (0.90, 0.90),
             "adc_mm2_s": (1.5e-3, 2.5e-3), "agent_mM": (0, 0)},
    "vessel": {"t1_ms": (1650, 1900), "t2_ms": (150, 150), "pd": (0.85, 0.85),
               "adc_mm2_s": (2.0e-3, 2.0e-3), "agent_mM": (0.9, 1.1)},
    "fat": {"t1_ms": (370, 400), "t2_ms": (60, 130), "pd": (0.90, 0.90),
            "adc_mm2_s": (0.05e-3, 0.05e-3), "agent_mM": (0, 0)},
    "skull": {"t1_ms": (1000, 1000), "t2_ms": (1, 1), "pd": (0.05, 0.05),
              "adc_mm2_s": (0.1e-3, 0.1e-3), "agent_mM": (0, 0)},
    # The lesion archetypes' tissues come last: a subject's draws for the tissues above (one
    # generator, in this order) stay what they were before these were added.
    "solid": {"t1_ms": (1200, 1600), "t2_ms": (80, 120), "pd": (0.85, 0.85),
              "adc_mm2_s": (0.8e-3, 1.2e-3), "agent_mM": (0.2, 0.6)},
    "lgg": {"t1_ms": (1400, 1900), "t2_ms": (120, 200), "pd": (0.88, 0.88),
            "adc_mm2_s": (1.2e-3, 1.7e-3), "agent_mM": (0, 0)},
    "gliosis": {"t1_ms": (1300, 1700), "t2_ms": (100, 160), "pd": (0.85, 0.85),
                "adc_mm2_s": (1.1e-3, 1.5e-3), "agent_mM": (0, 0)},
}


def null_inversion_time_ms(t1_ms: float, tr_ms: float) -> float:
    """The inversion time that nulls a tissue of T1 ``t1_ms`` in an inversion recovery repeated
    every ``tr_ms``: 1 - 2 exp(-TI/T1) + exp(-TR/T1) = 0, so TI = T1 ln(2 / (1 + exp(-TR/T1)))
    (T1 ln 2 when TR >> T1; at TR 9000 ms the CSF has not fully recovered, which moves the
    null from T1 ln 2, about 2950 ms, to about 2460 ms)."""
    return float(t1_ms * np.log(2.0 / (1.0 + np.exp(-tr_ms / t1_ms))))


# FLAIR: TI nulls the CSF of mid-range T1 (each subject's CSF T1 is drawn within 4000-4500 ms,
# so it is nulled to within a few percent of its proton density). TE 120 ms (clinical 3 T FLAIR
# uses 80-140 ms): at 90 ms an edema drawn at the SPEC's longest T1 and shortest T2 is no brighter
# than a white matter drawn at its shortest T1 and longest T2; at 120 ms it still is.
FLAIR_IR = {"tr_ms": FLAIR_TR_MS, "te_ms": 120.0,
            "ti_ms": float(round(null_inversion_time_ms(sum(TISSUE_RANGES["csf"]["t1_ms"]) / 2,
                                                        FLAIR_TR_MS)))}
# Air: no signal. T1/T2 stay positive so the signal equations never divide by zero.
_BACKGROUND = {"t1_ms": 1000.0, "t2_ms": 1.0, "pd": 0.0, "adc_mm2_s": 0.0, "agent_mM": 0.0}


@dataclass(frozen=True)
class TissueParams:
    """MR parameters of one tissue: T1, T2 (ms), proton density, ADC (mm2/s), agent (mM)."""

    t1_ms: float
    t2_ms: float
    pd: float
    adc_mm2_s: float
    agent_mM: float


def spgr_signal(pd_: Any, t1_ms: Any, t2_ms: Any, tr_ms: float = 8.0, te_ms: float = 3.0,
                flip_deg: float = 12.0) -> np.ndarray:
    """Spoiled gradient echo: S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*), T2* ~ T2.

    Args:
        pd_: proton density.
        t1_ms: T1 (ms).
        t2_ms: T2 (ms), used for T2*.
        tr_ms: repetition time (ms).
        te_ms: echo time (ms).
        flip_deg: flip angle (degrees).

    Returns:
        The signal, broadcast over the inputs.
    """
    flip = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_ms / np.asarray(t1_ms, dtype=float))
    return (np.asarray(pd_, dtype=float) * np.sin(flip) * (1 - e1) / (1 - np.cos(flip) * e1)
            * np.exp(-te_ms / np.asarray(t2_ms, dtype=float)))


def spin_echo_signal(pd_: Any, t1_ms: Any, t2_ms: Any, tr_ms: float, te_ms: float) -> np.ndarray:
    """Spin echo: S = PD (1 - exp(-TR/T1)) exp(-TE/T2).

    Args:
        pd_: proton density.
        t1_ms: T1 (ms).
        t2_ms: T2 (ms).
        tr_ms: repetition time (ms).
        te_ms: echo time (ms).

    Returns:
        The signal, broadcast over the inputs.
    """
    t1 = np.asarray(t1_ms, dtype=float)
    t2 = np.asarray(t2_ms, dtype=float)
    return np.asarray(pd_, dtype=float) * (1 - np.exp(-tr_ms / t1)) * np.exp(-te_ms / t2)


def inversion_recovery_signal(pd_: Any, t1_ms: Any, t2_ms: Any, tr_ms: float, te_ms: float,
                              ti_ms: float) -> np.ndarray:
    """Magnitude inversion recovery spin echo (FLAIR):
    S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2).

    Args:
        pd_: proton density.
        t1_ms: T1 (ms).
        t2_ms: T2 (ms).
        tr_ms: repetition time (ms).
        te_ms: echo time (ms).
        ti_ms: inversion time (ms).

    Returns:
        The signal, broadcast over the inputs.
    """
    t1 = np.asarray(t1_ms, dtype=float)
    t2 = np.asarray(t2_ms, dtype=float)
    recovery = 1 - 2 * np.exp(-ti_ms / t1) + np.exp(-tr_ms / t1)
    return np.asarray(pd_, dtype=float) * np.abs(recovery) * np.exp(-te_ms / t2)


def dwi_signal(s0: Any, adc_mm2_s: Any, b_s_mm2: float) -> np.ndarray:
    """Isotropic diffusion weighting: S(b) = S0 exp(-b ADC).

    Args:
        s0: signal at b = 0.
        adc_mm2_s: apparent diffusion coefficient (mm2/s).
        b_s_mm2: b value (s/mm2).

    Returns:
        The diffusion-weighted signal.
    """
    return np.asarray(s0, dtype=float) * np.exp(-b_s_mm2 * np.asarray(adc_mm2_s, dtype=float))


def t1_post_contrast(t1_ms: Any, agent_mM: Any,
                     r1_per_mM_s: float = GADOLINIUM_R1_PER_MM_S) -> np.ndarray:
    """T1 shortened by a contrast agent: 1/T1post = 1/T1pre + r1 C (rates in 1/s).

    Args:
        t1_ms: pre-contrast T1 (ms).
        agent_mM: agent concentration (mM).
        r1_per_mM_s: relaxivity (1/(mM s)).

    Returns:
        Post-contrast T1 (ms).
    """
    t1 = np.asarray(t1_ms, dtype=float)
    agent = np.asarray(agent_mM, dtype=float)
    rate_per_s = 1000.0 / t1 + r1_per_mM_s * agent
    # Without agent keep T1 bit-exact (1000 / (1000 / T1) may round differently).
    return np.where(agent > 0, 1000.0 / rate_per_s, t1)


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: |S + n1 + i n2|.

    Args:
        signal: noise-free magnitude signal.
        sigma: standard deviation of each of n1 and n2.
        rng: random generator.

    Returns:
        The noisy magnitude, float32, same shape.
    """
    real = np.asarray(signal, dtype=np.float32) + rng.normal(0.0, sigma, np.shape(signal)).astype(
        np.float32)
    imaginary = rng.normal(0.0, sigma, np.shape(signal)).astype(np.float32)
    return np.hypot(real, imaginary)


def tissue_parameters(rng: np.random.Generator) -> dict[str, TissueParams]:
    """Draw one subject's tissue parameters uniformly within the SPEC ranges.

    Args:
        rng: random generator (per subject).

    Returns:
        Tissue name -> parameters, for every tissue of ``TISSUE_RANGES`` plus ``background``.
    """
    tissues = {"background": TissueParams(**_BACKGROUND)}
    for name, ranges in TISSUE_RANGES.items():
        tissues[name] = TissueParams(**{key: float(rng.uniform(low, high))
                                        for key, (low, high) in ranges.items()})
    return tissues


def noise_free_image(modality: str, maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """Scanner-scaled, noise- and bias-free image of a modality from parameter maps on its grid.

    Args:
        modality: one of ``MODALITIES`` or ``FLAIR``; ``ceT1w`` shortens T1 by the agent,
            ``T1w`` ignores it.
        maps: parameter maps (``PARAMETER_NAMES``) sampled on the modality's grid.

    Returns:
        Float64 image; 4D (last axis = ``B_VALUES``) for ``dwi``.
    """
    gain = WM_SCANNER_SIGNAL / _white_matter_reference(modality)
    pd_, t1, t2 = maps["pd"], maps["t1_ms"], maps["t2_ms"]
    if modality in ("T1w", "ceT1w"):
        if modality == "ceT1w":
            t1 = t1_post_contrast(t1, maps["agent_mM"])
        return gain * spgr_signal(pd_, t1, t2, **SPGR)
    if modality == "T2w":
        return gain * spin_echo_signal(pd_, t1, t2, **T2_SE)
    if modality == "FLAIR":
        return gain * inversion_recovery_signal(pd_, t1, t2, **FLAIR_IR)
    if modality == "dwi":
        s0 = gain * spin_echo_signal(pd_, t1, t2, **DWI_SE)
        return np.stack([dwi_signal(s0, maps["adc_mm2_s"], b) for b in B_VALUES], axis=-1)
    raise ValueError(f"unknown modality {modality!r}")


def _white_matter_reference(modality: str) -> float:
    """Unscaled signal of a mid-range white matter (b = 0 for DWI): fixes each scanner gain."""
    wm = {key: sum(bounds) / 2 for key, bounds in TISSUE_RANGES["wm"].items()}
    if modality in ("T1w", "ceT1w"):
        return float(spgr_signal(wm["pd"], wm["t1_ms"], wm["t2_ms"], **SPGR))
    if modality == "FLAIR":
        return float(inversion_recovery_signal(wm["pd"], wm["t1_ms"], wm["t2_ms"], **FLAIR_IR))
    acquisition = T2_SE if modality == "T2w" else DWI_SE
    return float(spin_echo_signal(wm["pd"], wm["t1_ms"], wm["t2_ms"], **acquisition))


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(amplitude * f), f a random quadratic with max |f| = 1.

    Args:
        rng: random generator.
        shape: grid shape (the field is fixed in scanner space).
        amplitude: log-amplitude; 0.15 gives about +-15 %.

    Returns:
        Float32 field.
    """
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    coefficients = rng.normal(size=len(terms))
    field_ = sum(c * t for c, t in zip(coefficients, terms, strict=True))
    field_ = np.broadcast_to(field_, shape)
    field_ = field_ / max(float(np.abs(field_).max()), 1e-12)
    return np.exp(amplitude * field_).astype(np.float32)

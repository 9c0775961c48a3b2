"""cesynth: synthesize gadolinium-enhanced T1 from pre-contrast T1, T2 and ADC."""

__version__ = "0.1.0"

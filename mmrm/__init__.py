"""mmrm: shortcut-aware multimodal reward models (Li et al., ICML 2025)."""

__version__ = "0.1.0"

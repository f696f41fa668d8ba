from lit_dr.callbacks.export import ExportBest
from lit_dr.callbacks.refresh import NegativeRefresh

__all__ = ["ExportBest", "NegativeRefresh"]

from lit_dr.callbacks.refresh import NegativeRefresh

__all__ = ["NegativeRefresh"]

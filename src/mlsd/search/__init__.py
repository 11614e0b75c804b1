"""The search system; the platform reaches it through ``SYSTEM`` (see ``mlsd.search.system``)."""

from mlsd.search.system import SYSTEM

__all__ = ["SYSTEM"]

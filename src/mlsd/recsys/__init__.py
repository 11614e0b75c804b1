"""The recsys system; the platform reaches it through ``SYSTEM`` (see ``mlsd.recsys.system``)."""

from mlsd.recsys.system import SYSTEM

__all__ = ["SYSTEM"]

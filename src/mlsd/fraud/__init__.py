"""The fraud system; the platform reaches it through ``SYSTEM`` (see ``mlsd.fraud.system``)."""

from mlsd.fraud.system import SYSTEM

__all__ = ["SYSTEM"]

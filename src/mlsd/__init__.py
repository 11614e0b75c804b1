"""mlsd: three canonical production ML system designs as real, running, measured software."""

__version__ = "0.1.0"

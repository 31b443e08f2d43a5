"""The push server: a thin anyio driver around the pure core, in rooms (see ``server``)."""

from .server import Server as Server
from .server import serve as serve
from .tuning import pace_gc as pace_gc
from .tuning import tune_process as tune_process

__all__ = ["Server", "pace_gc", "serve", "tune_process"]

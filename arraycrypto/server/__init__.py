"""The push server: a thin anyio driver around the pure core, in rooms (see ``server``)."""

from .server import Server as Server
from .server import serve as serve
from .tuning import tune_process as tune_process

__all__ = ["Server", "serve", "tune_process"]

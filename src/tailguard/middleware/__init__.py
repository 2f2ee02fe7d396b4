"""Pure-ASGI middleware, route resolution and tailguard's own error responses."""

from tailguard.middleware.asgi import TailguardMiddleware

__all__ = ["TailguardMiddleware"]

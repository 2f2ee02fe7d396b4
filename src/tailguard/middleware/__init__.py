"""The pure-ASGI adapter: the middleware, the per-request object and its helpers."""

from tailguard.middleware.asgi import TailguardMiddleware

__all__ = ["TailguardMiddleware"]

"""Request handling any inference server can embed (:class:`InferenceServer`): validation,
image decoding within memory bounds, selection with logged exploration and an optional shadow
challenger, model execution, a decision log that never fails a request, Prometheus metrics and
health. ``modi-serve`` is a FastAPI shell around it; ``modi-promote`` moves ``@champion``.

Needs the ``server`` extra (Pillow, PyYAML, prometheus-client); never imports torch, gymnasium,
SB3, mlflow or hydra at import.
"""

from modi.serving.core import (
    CONTENT_TYPES,
    INFER_FIELDS,
    Choice,
    InferenceServer,
    ServeConfig,
    Shadow,
    read_body,
)
from modi.serving.errors import HTTPProblem, ServerConfigError
from modi.serving.images import DecodeLimits
from modi.serving.logwriter import DecisionLogWriter
from modi.serving.policy import Exploration

__all__ = [
    "CONTENT_TYPES",
    "INFER_FIELDS",
    "Choice",
    "DecisionLogWriter",
    "DecodeLimits",
    "Exploration",
    "HTTPProblem",
    "InferenceServer",
    "ServeConfig",
    "ServerConfigError",
    "Shadow",
    "read_body",
]

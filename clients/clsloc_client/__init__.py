"""Python client for the clsloc HTTP service (sync and async, httpx only).

    from clsloc_client import Client
    with Client("http://127.0.0.1:3000") as client:
        prediction = client.predict("photo.jpg")
        print(prediction.label, prediction.score, prediction.box.xyxy())

Every failure is a :class:`ClsLocError` subclass carrying the HTTP ``status``
and the service's ``error`` / ``detail`` (see :mod:`clsloc_client.errors`).
"""

from clsloc_client._version import __version__
from clsloc_client.async_client import AsyncClient
from clsloc_client.client import Client
from clsloc_client.errors import (
    BadImage,
    ClsLocError,
    InputError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
)
from clsloc_client.protocol import Result
from clsloc_client.results import Box, ModelRef, Prediction
from clsloc_client.retry import Retry
from clsloc_client.uploads import ImageInput

__all__ = [
    "AsyncClient",
    "BadImage",
    "Box",
    "Client",
    "ClsLocError",
    "ImageInput",
    "InputError",
    "ModelRef",
    "Prediction",
    "Result",
    "Retry",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedFormat",
    "__version__",
]

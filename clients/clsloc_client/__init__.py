"""Python client for the clsloc HTTP service (sync and async, httpx only).

    from clsloc_client import Client
    with Client("http://127.0.0.1:3000") as client:
        result = client.predict("photo.jpg")
        print(result["label"], result["score"], result["box"])

Errors from the service raise :class:`ClsLocError` carrying the HTTP status and
the service's ``error`` / ``detail`` fields.
"""

from clsloc_client.client import AsyncClient, Client, ClsLocError

__all__ = ["AsyncClient", "Client", "ClsLocError"]
__version__ = "0.1.0"

"""The stallable TCP relay now lives in `tests.proxy`; kept for old imports."""

from tests.proxy import StallProxy as StallProxy  # noqa: PLC0414 - re-exported

__all__ = ["StallProxy"]

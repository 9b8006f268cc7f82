"""Arrow schemas and the manifest: the one place a column or manifest field is defined."""

from schemas.columns import DOCUMENT_SCHEMA, REJECT_FIELDS, SAMPLE_SCHEMA

__all__ = ["DOCUMENT_SCHEMA", "REJECT_FIELDS", "SAMPLE_SCHEMA"]

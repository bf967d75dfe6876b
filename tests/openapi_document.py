"""
The OpenAPI document, C{refresherd/openapi.json}, as the tests read it: its
bytes as served, and parsed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENT_FILE = Path(__file__).resolve().parent.parent / "refresherd" / "openapi.json"
RAW = DOCUMENT_FILE.read_bytes()
DOCUMENT: dict[str, Any] = json.loads(RAW)

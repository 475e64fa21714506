"""``python -m wire``: print the wire format's JSON Schema (what docs/wire-format.schema.json holds)."""

import json

from wire import json_schema

print(json.dumps(json_schema(), indent=2, sort_keys=True))

"""`python -m openapi DESCRIPTOR_SET OUTPUT`: writes the OpenAPI document of the
REST API that the descriptor set (protoc --include_imports --include_source_info)
declares. `make gen` runs it on gen/contacts.pb."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openapi.descriptors import Contract
from openapi.document import document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openapi", description=__doc__)
    parser.add_argument("descriptor_set", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    built = document(Contract.load(args.descriptor_set.read_bytes()))
    args.output.write_text(json.dumps(built, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

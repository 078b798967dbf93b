"""Rewrite normfree/model_table.json: every registered model's parameters and multiply-adds at its defaults
(what ``normfree models`` lists). Run after adding a model or changing a builder:
``python tools/model_table.py``; tests/test_cli_vocabulary.py fails while the table is stale."""
from __future__ import annotations

import json

from normfree.commands.models import TABLE, count_model
from normfree.registry import list_models


def main() -> None:
    table = {name: count_model(name) for name in list_models()}
    TABLE.write_text(json.dumps(table, indent=0, sort_keys=True) + "\n")
    print(f"wrote {TABLE}: {len(table)} models")


if __name__ == "__main__":
    main()
